"""VAE Encode -> VAE Decode through the nodes gives back the frame count that was encoded, for every
frame count the encoder accepts and every VAE layout the pack loads; where diffusers' own decode is
right (odd latent counts) the frames are CogVideoXPipeline's (up to the rounding of 1/s * z against
z / s), and for even counts every frame before the last latent's is diffusers' decode of the odd prefix."""

import pytest
import torch

from tests.conftest import BUNDLED, ROOT, load_pack
from tests.tiny_svd import write_tiny_svd

COUNTS = (5, 9, 13, 17, 49)
SAME = dict(rtol=0.0, atol=1e-6)  # frames are 0..1: float rounding, far below one 8-bit level
COGVIDEOX = ("tiny-5b", "tiny-1.5", "bundled", "bundled-i2v")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def models(pack, tiny_folders, tmp_path_factory):
    from vidinv_pack.vidinv.models import cogvideox, svd
    svd_folder = write_tiny_svd(tmp_path_factory.mktemp("svd") / "tiny-svd")
    return {"tiny-5b": lambda: cogvideox.load(tiny_folders["5b"]),
            "tiny-1.5": lambda: cogvideox.load(tiny_folders["1.5"]),
            "bundled": lambda: cogvideox.load(BUNDLED),
            "bundled-i2v": lambda: cogvideox.load(ROOT / "assets" / "tiny-cogvideox-i2v"),
            "svd": lambda: svd.load(svd_folder)}


@pytest.fixture(scope="module")
def loaded(models):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = models[name]()
        return cache[name]
    return get


def frames_of(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, size, size, 3, generator=torch.Generator().manual_seed(seed))


def round_trip(pack, model, frames):
    m = pack.NODE_CLASS_MAPPINGS
    size = model.required_size[0] if getattr(model, "required_size", None) else frames.shape[1]
    latent, clip = m["VInvVAEEncode"]().encode(model, frames, "error", "resize and crop", size, size, "off")["result"]
    decoded, = m["VInvVAEDecode"]().decode(model, latent, "off")
    return latent, clip, decoded


@pytest.mark.parametrize("name", COGVIDEOX + ("svd",))
@pytest.mark.parametrize("n", COUNTS)
def test_decode_gives_back_the_encoded_frame_count(pack, loaded, name, n):
    model = loaded(name)
    _, clip, decoded = round_trip(pack, model, frames_of(n))
    assert clip.shape[0] == n
    assert decoded.shape == clip.shape


def pipeline_decode(model, latents: torch.Tensor) -> torch.Tensor:
    """What diffusers' CogVideoXPipeline.decode_latents returns for scaled latents [1, F, C, h, w], as IMAGE."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
    pipe = CogVideoXPipeline(tokenizer=model.tokenizer, text_encoder=model.text_encoder, vae=model.vae,
                             transformer=model.transformer,
                             scheduler=CogVideoXDDIMScheduler.from_config(model.scheduler_config))
    with torch.no_grad():
        video = pipe.decode_latents(latents)
    return ((video.float()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)


@pytest.mark.parametrize("name", ("tiny-5b", "bundled"))
def test_odd_latent_counts_decode_as_diffusers_does(pack, loaded, name):
    model = loaded(name)
    latent, _, decoded = round_trip(pack, model, frames_of(17, seed=1))  # 5 latent frames
    assert latent["samples"].shape[1] == 5
    torch.testing.assert_close(decoded, pipeline_decode(model, latent["samples"]), **SAME)


@pytest.mark.parametrize("name", ("tiny-5b", "tiny-1.5", "bundled"))
@pytest.mark.parametrize("n", (13, 21))  # 4 and 6 latent frames
def test_even_latent_counts_keep_diffusers_frames_of_the_odd_prefix(pack, loaded, name, n):
    """diffusers decodes an even count to 4k+4 frames; the pack's decode agrees exactly with its
    (right) decode of the first F-1 latents, and adds the last latent's 4 frames."""
    model = loaded(name)
    latent, _, decoded = round_trip(pack, model, frames_of(n, seed=2))
    z = latent["samples"]
    assert z.shape[1] % 2 == 0
    prefix = pipeline_decode(model, z[:, :-1])
    assert prefix.shape[0] == n - 4
    torch.testing.assert_close(decoded[:n - 4], prefix, **SAME)
    assert pipeline_decode(model, z).shape[0] == n + 3  # the defect this guards against


def test_trained_vae_returns_the_frames_in_order(pack, loaded):
    """On the trained bundled VAE each decoded frame of a 13-frame clip (an even latent count) is
    nearest to its own source frame, and close to it."""
    from vidinv_pack.vidinv import synthetic
    clip = torch.from_numpy(synthetic.render(synthetic.heldout_specs(1, frames=13)[0])).float()
    model = loaded("bundled")
    _, got, decoded = round_trip(pack, model, clip)
    err = ((decoded[:, None] - got[None]) ** 2).flatten(2).mean(-1)  # [decoded, source]
    assert err.argmin(dim=1).tolist() == list(range(13))
    psnr = -10 * torch.log10(err.diagonal())
    assert float(psnr.min()) > 20.0, psnr
