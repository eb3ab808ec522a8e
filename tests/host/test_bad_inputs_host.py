"""Hostile and broken input through a real ComfyUI 0.3.75 (issue 17): every row of the matrix is
a mutation of one small good graph and the fragment its refusal must contain; a good run before
and after the attacks saves bit-identical latents and trajectory. One server for the module,
with a test-only node whose output is any-typed (as common utility packs provide), so text can
reach inputs that the editor offers only as a list."""
import hashlib
import json
import math

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import time
from pathlib import Path

import torch

from tests.host.helpers import node, svd_round_trip
from tests.unit.test_untrusted import light_copy
from tools import comfy_host

pytestmark = pytest.mark.host
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "vinv_red_circle_right_first_frame_green.png"  # 64x64, copied into input/ by the pack
MODEL = "tiny-cogvideox (bundled)"
ANY_NODE = '''
class AnyType(str):
    def __ne__(self, other):  # the "any type" of utility packs: matches every socket
        return False


class VInvTestAny:
    RETURN_TYPES = (AnyType("*"),)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"default": ""})}}

    def run(self, value):
        import json
        return (json.loads(value),)


NODE_CLASS_MAPPINGS = {"VInvTestAny": VInvTestAny}
'''


def good_graph(tag: str) -> dict:
    """Load -> 5 frames -> encode -> text -> 2-step exact inversion -> DDIM sample (trajectory
    connected) and reference attention + guided sample; every result saved under `tag`."""
    return {
        "1": node("VInvLoadCogVideoX", model=MODEL, precision="fp32", offload="none"),
        "2": node("LoadImage", image=IMAGE),
        "3": node("RepeatImageBatch", image=["2", 0], amount=5),
        "4": node("VInvVAEEncode", model=["1", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                  width=0, height=0, tiling="auto"),
        "5": node("VInvEncodeText", model=["1", 0], prompt="a red circle moving right", negative_prompt=""),
        "6": node("VInvDDIMInvert", model=["1", 0], conditioning=["5", 0], latent=["4", 0], steps=2, guidance=1.0,
                  dynamic_cfg=False, iterations=2, tolerance=0.0, solver="anderson", damping=0.0,
                  trajectory_dtype="fp32"),
        "7": node("VInvDDIMSample", model=["1", 0], conditioning=["5", 0], latent=["6", 1], steps=2, guidance=1.0,
                  dynamic_cfg=False, negative="conditioning", trajectory=["6", 0]),
        "8": node("VInvReferenceAttention", model=["1", 0], trajectory=["6", 0], blocks="all", start=0.0, end=1.0,
                  weight=4.0, reference_text=False, rows="all", reference_conditioning="source"),
        "9": node("VInvGuidedSample", model=["8", 0], conditioning=["5", 0], guidance=1.0, dynamic_cfg=False,
                  start="inverted", seed=0, negative="conditioning"),
        "10": node("SaveLatent", samples=["4", 0], filename_prefix=f"{tag}/source"),
        "11": node("SaveLatent", samples=["7", 0], filename_prefix=f"{tag}/rec"),
        "12": node("SaveLatent", samples=["9", 0], filename_prefix=f"{tag}/guided"),
        "13": node("VInvSaveTrajectory", trajectory=["6", 0], filename_prefix=f"{tag}/trajectory"),
    }


def load_graph(file) -> dict:
    """Load Trajectory (its file name from a widget, or a JSON value through the any-typed node)
    -> DDIM Sample of its noise."""
    g = {k: v for k, v in good_graph("never").items() if k in ("1", "2", "3", "4", "5")}
    g["20"] = node("VInvLoadTrajectory", model=["1", 0], file=file)
    if not isinstance(file, str):  # a value for the any-typed node
        g["21"] = node("VInvTestAny", value=json.dumps(file[0]))
        g["20"]["inputs"]["file"] = ["21", 0]
    g["22"] = node("VInvDDIMSample", model=["1", 0], conditioning=["5", 0], latent=["20", 1], steps=2, guidance=1.0,
                   dynamic_cfg=False, negative="conditioning", trajectory=["20", 0])
    g["23"] = node("SaveLatent", samples=["22", 0], filename_prefix="never/loaded")
    return g


def svd_graph(sample_steps: int) -> dict:
    """The bundled tiny SVD: 3 frames at 16x16, a 2-step exact inversion, Euler sampling of its noise."""
    return {
        **svd_round_trip("tiny-svd (bundled)", IMAGE, 16, 2, 1, 0.0, sample_steps),
        "8": node("SaveLatent", samples=["7", 0], filename_prefix="never/svd"),
    }


def any_value(graph: dict, nid: str, key: str, value) -> dict:
    """Feed `value` to input `key` of node `nid` through the any-typed node (no widget checks)."""
    graph[f"any-{key}"] = node("VInvTestAny", value=json.dumps(value))
    graph[nid]["inputs"][key] = [f"any-{key}", 0]
    return graph


def hostile_wan(g: dict) -> dict:
    """The good graph's frames encoded by the Wan folder models/Wan/hostile-layers."""
    return {"2": g["2"], "3": g["3"], "30": node("VInvLoadWan", model="hostile-layers", precision="fp32", offload="none"),
            "31": node("VInvVAEEncode", model=["30", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                       width=0, height=0, tiling="auto"),
            "32": node("SaveLatent", samples=["31", 0], filename_prefix="never/wan")}


def foreign_latent(g: dict) -> dict:
    """The good graph's frames encoded by the bundled Wan, decoded by the bundled CogVideoX (both latents
    are [1, 2, 16, 8, 8] here: only the latent's model tells them apart)."""
    return {"1": g["1"], "2": g["2"], "3": g["3"],
            "30": node("VInvLoadWan", model="tiny-wan (bundled)", precision="fp32", offload="none"),
            "31": node("VInvVAEEncode", model=["30", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                       width=0, height=0, tiling="auto"),
            "32": node("VInvVAEDecode", model=["1", 0], latent=["31", 0], tiling="auto"),
            "33": node("PreviewImage", images=["32", 0])}


def mutate(nid, **inputs):
    def change(g):
        g[nid]["inputs"].update(inputs)
        return g
    return change


def saved_hashes(server, entry) -> dict:
    """sha256 of every saved latent tensor and of the saved trajectory's tensors, by node id."""
    out = {}
    for nid, item in entry["outputs"].items():
        for saved in item.get("latents", []):
            path = server.base / "output" / saved["subfolder"] / saved["filename"]
            out[nid] = hashlib.sha256(load_file(str(path))["latent_tensor"].numpy().tobytes()).hexdigest()
        for saved in item.get("vinv_saved", []):
            path = server.base / "output" / saved["subfolder"] / saved["filename"]
            tensors = load_file(str(path))
            out[nid] = hashlib.sha256(b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))).hexdigest()
    return out


@pytest.fixture(scope="module")
def server(host, tmp_path_factory):
    base = host.base(tmp_path_factory.mktemp("bad-inputs"))
    (base / "custom_nodes" / "vinv_test_any.py").write_text(ANY_NODE)
    with comfy_host.Server(host, base) as srv:
        yield srv
    assert srv.proc.poll() is not None


@pytest.fixture(scope="module")
def before(server):
    entry = server.run(good_graph("before"), timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    hashes = saved_hashes(server, entry)
    assert set(hashes) == {"10", "11", "12", "13"}
    item = entry["outputs"]["13"]["vinv_saved"][0]
    return hashes, server.base / "output" / item["subfolder"] / item["filename"]


@pytest.fixture(scope="module")
def files(server, before, tmp_path_factory):
    """Damaged copies of the good trajectory in input/, one outside ComfyUI's folders, and a
    symlink in input/ that points to it."""
    good = before[1]
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["vidinv"]), {k: f.get_tensor(k) for k in f.keys()}

    def write(name, meta_text=None, **replace):
        save_file({**tensors, **replace}, str(server.base / "input" / name),
                  metadata={"vidinv": meta_text if meta_text is not None else json.dumps(meta)})

    lat = tensors["latents"]
    write("nan_latents.safetensors", latents=lat * math.nan)
    write("int_latents.safetensors", latents=lat.to(__import__("torch").int32))
    write("meta_list.safetensors", "[1, 2, 3]")
    write("meta_string.safetensors", '"text"')
    write("no_timesteps.safetensors", json.dumps({k: v for k, v in meta.items() if k != "timesteps"}))
    write("text_iterations.safetensors", json.dumps({**meta, "iterations": "ten"}))
    write("wide_embeds.safetensors", embeds=tensors["embeds"].repeat(1, 1, 2).contiguous(),
          negative_embeds=tensors["negative_embeds"].repeat(1, 1, 2).contiguous())
    write("pad_frames.safetensors", json.dumps({**meta, "extra": {**meta["extra"], "pad_frames": 10 ** 6}}))
    steps = len(meta["timesteps"])
    write("exact_with_maps.safetensors", noise_maps=torch.zeros(steps, *lat.shape[1:]))
    write("huge_latents.safetensors", latents=lat * 1e6)
    hostile = server.base / "models" / "Wan" / "hostile-layers"
    light_copy(ROOT / "assets" / "tiny-wan", hostile)
    cfg = json.loads((hostile / "transformer" / "config.json").read_text())
    (hostile / "transformer" / "config.json").write_text(json.dumps({**cfg, "num_layers": 1_000_000_000}))
    outside = tmp_path_factory.mktemp("outside") / "outside.safetensors"
    outside.write_bytes(good.read_bytes())
    (server.base / "input" / "link_out.safetensors").symlink_to(outside)
    return outside


# (name, graph from the good graph and the outside file, node that refuses, fragment of its message)
ROWS = [
    ("blocks huge range", lambda g, o: mutate("8", blocks="0-99999999999")(g), "VInvReferenceAttention",
     "names 99999999999 in '0-99999999999', outside 0..7"),
    ("blocks large range", lambda g, o: mutate("8", blocks="0-200000")(g), "VInvReferenceAttention",
     "names 200000 in '0-200000', outside 0..7"),
    ("blocks backwards", lambda g, o: mutate("8", blocks="5-2")(g), "VInvReferenceAttention",
     "the range '5-2', which runs backwards (write 2-5)"),
    ("blocks -0", lambda g, o: mutate("8", blocks="-0")(g), "VInvReferenceAttention", "the first 0 blocks"),
    ("blocks -", lambda g, o: mutate("8", blocks="-")(g), "VInvReferenceAttention", "a '-' with no numbers"),
    ("guidance 0.5 widget", lambda g, o: mutate("6", guidance=0.5)(g), "VInvDDIMInvert", "smaller than min of 1.0"),
    ("guidance 0 link", lambda g, o: any_value(g, "6", "guidance", 0.0), "VInvDDIMInvert",
     "guidance 0.0 is outside 1.0..30.0. Set guidance to a number from 1.0 to 30.0. Guidance below 1 would weaken"),
    ("guidance NaN", lambda g, o: mutate("6", guidance=math.nan)(g), "VInvDDIMInvert",
     "guidance is nan, not a finite number"),
    ("guided guidance NaN", lambda g, o: mutate("9", guidance=math.nan)(g), "VInvGuidedSample",
     "guidance is nan, not a finite number"),
    ("tolerance NaN", lambda g, o: mutate("6", tolerance=math.nan)(g), "VInvDDIMInvert",
     "tolerance is nan, not a finite number"),
    ("weight infinite widget", lambda g, o: mutate("8", weight=math.inf)(g), "VInvReferenceAttention",
     "Value inf bigger than max of 20.0"),
    ("weight infinite link", lambda g, o: any_value(g, "8", "weight", math.inf), "VInvReferenceAttention",
     "weight is inf, not a finite number"),
    ("steps text link", lambda g, o: any_value(g, "6", "steps", "2"), "VInvDDIMInvert",
     "steps is '2', not a finite whole number"),
    ("sample steps differ", lambda g, o: mutate("7", steps=3)(g), "VInvDDIMSample",
     "steps is 3, but the connected trajectory has 2 steps"),
    ("svd sample steps differ", lambda g, o: svd_graph(3), "VInvSVDSample",
     "Euler Sample (SVD): steps is 3, but the latent is the noise of a trajectory with 2 steps"),
    ("svd guidance below 1 link", lambda g, o: any_value(svd_graph(2), "7", "min_guidance", 0.5), "VInvSVDSample",
     "min_guidance 0.5 is outside 1.0..30.0"),
    ("save absolute", lambda g, o: mutate("13", filename_prefix="/etc/x")(g), "VInvSaveTrajectory",
     "filename_prefix '/etc/x' is an absolute path"),
    ("save NUL", lambda g, o: mutate("13", filename_prefix="a\0b")(g), "VInvSaveTrajectory", "contains a NUL byte"),
    ("save long", lambda g, o: mutate("13", filename_prefix="p" * 300)(g), "VInvSaveTrajectory",
     "is 300 characters long (at most 200)"),
    ("save outside", lambda g, o: mutate("13", filename_prefix="../../x")(g), "VInvSaveTrajectory",
     "points outside the output folder"),
    ("file NaN latents", lambda g, o: load_graph("nan_latents.safetensors"), "VInvLoadTrajectory",
     "tensor 'latents' holds NaN or infinite values"),
    ("file int latents", lambda g, o: load_graph("int_latents.safetensors"), "VInvLoadTrajectory",
     "tensor 'latents' is int32"),
    ("file meta list", lambda g, o: load_graph("meta_list.safetensors"), "VInvLoadTrajectory",
     "the trajectory metadata is a list, not a JSON object"),
    ("file meta string", lambda g, o: load_graph("meta_string.safetensors"), "VInvLoadTrajectory",
     "the trajectory metadata is a string"),
    ("file lacks timesteps", lambda g, o: load_graph("no_timesteps.safetensors"), "VInvLoadTrajectory",
     "lacks the field 'timesteps'"),
    ("file text iterations", lambda g, o: load_graph("text_iterations.safetensors"), "VInvLoadTrajectory",
     "field 'iterations' must be a whole number >= 0, got a string"),
    ("file wide embeds", lambda g, o: load_graph("wide_embeds.safetensors"), "VInvLoadTrajectory",
     "has 128 channels, the model's conditioning has 64"),
    ("file pad frames", lambda g, o: load_graph("pad_frames.safetensors"), "VInvLoadTrajectory",
     "extra.pad_frames must be a whole number from 0 to"),
    ("encode 8192 widget", lambda g, o: mutate("4", width=8192, height=8192)(g), "VInvVAEEncode",
     "Value 8192 bigger than max of 4096"),
    ("encode 4096 x 81 frames", lambda g, o: mutate("4", width=4096, height=4096)(mutate("3", amount=81)(g)),
     "VInvVAEEncode", "resizing 81 frames of 64x64 to 4096x4096 needs about 4"),
    ("wan folder 1e9 layers", lambda g, o: hostile_wan(g), "VInvLoadWan", "num_layers is a number (1000000000), expected a whole number from 1 to 1024"),
    ("wan latent to cogvideox decode", lambda g, o: foreign_latent(g), "VInvVAEDecode",
     "VAE Decode Video: this latent was made by the model 'tiny-wan (bundled)', not by 'tiny-cogvideox (bundled)'"),
    ("save 196 e-acute", lambda g, o: mutate("13", filename_prefix="\u00e9" * 196)(g), "VInvSaveTrajectory",
     "is 392 bytes long in UTF-8"),
    ("save newline", lambda g, o: mutate("13", filename_prefix="a\nb")(g), "VInvSaveTrajectory",
     "contains a control character"),
    ("file exact with noise maps", lambda g, o: load_graph("exact_with_maps.safetensors"), "VInvLoadTrajectory",
     "is declared exact (version 1) but carries noise maps"),
    ("file latents x1e6", lambda g, o: load_graph("huge_latents.safetensors"), "VInvLoadTrajectory",
     "latents reach"),
    ("file /etc/passwd", lambda g, o: load_graph(["/etc/passwd"]), "VInvLoadTrajectory",
     "'/etc/passwd' is not a readable file in ComfyUI's input folder"),
    ("file absolute outside", lambda g, o: load_graph([str(o)]), "VInvLoadTrajectory",
     "is not a readable file in ComfyUI's input folder"),
    ("file dotdot output", lambda g, o: load_graph([f"../../../../{o} [output]"]), "VInvLoadTrajectory",
     "is not a readable file in ComfyUI's output folder"),
    ("file symlink out", lambda g, o: load_graph(["link_out.safetensors"]), "VInvLoadTrajectory",
     "'link_out.safetensors' is not a readable file in ComfyUI's input folder"),
    ("file missing", lambda g, o: load_graph(["missing.safetensors"]), "VInvLoadTrajectory",
     "'missing.safetensors' is not a readable file in ComfyUI's input folder"),
]


SIZES_AND_FILES = {"encode 8192 widget", "encode 4096 x 81 frames", "wan folder 1e9 layers", "file exact with noise maps",
                   "file latents x1e6"}


def refusal(server, prompt) -> tuple[str | None, str]:
    """(node type, message) of a prompt's refusal: a validation error (HTTP 400) or an execution error."""
    status, body = server.queue(prompt)
    if status != 200 or body.get("node_errors"):
        errs = body.get("node_errors") or {}
        nid = next(iter(errs), None)
        return (prompt[nid]["class_type"] if nid in prompt else None), json.dumps(body)
    entry = server.wait(body["prompt_id"], 300)
    assert entry["status"]["status_str"] == "error", f"accepted: {entry['status']}"
    err = comfy_host.execution_error(entry)
    assert "Traceback" not in err["exception_message"]
    return err["node_type"], err["exception_message"]


def server_rss(server) -> int:
    """The server process's resident memory in bytes."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("name, build, node_type, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused(server, before, files, name, build, node_type, fragment):
    rss, start = server_rss(server), time.perf_counter()
    got_type, message = refusal(server, build(good_graph(f"attack-{len(name)}"), files))
    seconds, grown = time.perf_counter() - start, server_rss(server) - rss
    assert got_type == node_type, message
    assert fragment in message, message
    assert len(message) < 1200, len(message)  # no listing of indices, no echo of a long field
    if name in SIZES_AND_FILES:  # refused before any work: at once, with nothing allocated (issue 38)
        assert seconds < 3.0 and grown < 200 * 2**20, (seconds, grown / 2**20)
        print(f"{name}: refused in {seconds:.2f} s, server memory {grown / 2**20:+.0f} MiB")


def test_rgba_frames_encode_like_rgb(server, before):
    g = good_graph("rgba")
    g["14"] = node("JoinImageWithAlpha", image=["2", 0], alpha=["2", 1])
    g["3"]["inputs"]["image"] = ["14", 0]
    entry = server.run(g, timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    assert saved_hashes(server, entry) == before[0]


def test_listing_and_model_scan_survive_hostile_folders(server, before):
    """A malformed model folder does not take the loaders away; a symlink leading out of input/
    is not listed."""
    for kind, sub, text in (("CogVideo", "transformer", "[1, 2, 3]"), ("SVD", "unet", "null")):
        bad = server.base / "models" / kind / "broken" / sub
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "config.json").write_text(text)
    for key, bundled in (("VInvLoadCogVideoX", MODEL), ("VInvLoadSVD", "tiny-svd (bundled)")):
        info = server.get(f"/object_info/{key}")
        assert bundled in info[key]["input"]["required"]["model"][0]
    files = server.get("/object_info/VInvLoadTrajectory")["VInvLoadTrajectory"]["input"]["required"]["file"][0]
    assert "link_out.safetensors" not in files and "nan_latents.safetensors" in files


def test_good_runs_after_the_attacks_are_identical(server, before, files):
    hashes, _ = before
    entry = server.run(good_graph("after"), timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    assert saved_hashes(server, entry) == hashes
    status, _ = server.post("/free", {"free_memory": True, "unload_models": True})  # nothing cached: all again
    assert status == 200
    entry = server.run(good_graph("after-fresh"), timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    assert saved_hashes(server, entry) == hashes
