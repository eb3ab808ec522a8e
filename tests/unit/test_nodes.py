"""The nodes without ComfyUI: registration conventions, and a whole graph called by hand on a
tiny random model (the host tests run the same nodes inside a real ComfyUI)."""
import shutil

import pytest
import torch

from tests.conftest import load_pack


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def test_registration_conventions(pack):
    maps, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(maps) == set(names) and pack.WEB_DIRECTORY == "./js"
    for key, cls in maps.items():
        assert cls.CATEGORY.startswith("video inversion/"), key
        assert cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, s in spec.get(section, {}).items():
                assert len(s) > 1 and s[1].get("tooltip"), f"{key}.{name}"
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)


@pytest.fixture(scope="module")
def graph(pack, tiny_folders, tmp_path_factory):
    """Every node once, in order, as ComfyUI would call them."""
    root = tmp_path_factory.mktemp("comfy")
    host = pack.nodes.host
    saved = dict(host._FALLBACK_DIRS)
    host._FALLBACK_DIRS.update(models=root / "models", input=root / "input", output=root / "output")
    (root / "models" / "CogVideo").mkdir(parents=True)
    shutil.copytree(tiny_folders["5b"], root / "models" / "CogVideo" / "tiny-5b")
    m = pack.NODE_CLASS_MAPPINGS
    out = {}
    try:
        out["model"], = m["VInvLoadCogVideoX"]().load("tiny-5b", "fp32", "none")
        enc = m["VInvEncodeText"]().encode(out["model"], "a red circle moving right", "")
        out["cond"], = enc["result"]
        out["edit"], = m["VInvEncodeText"]().encode(out["model"], "a green circle moving right", "")["result"]
        frames = torch.rand(11, 40, 56, 3, generator=torch.Generator().manual_seed(3))
        res = m["VInvVAEEncode"]().encode(out["model"], frames, "trim to 4k+1", "resize and crop", 0, 0, "auto")
        out["latent"], out["frames"] = res["result"]
        out["encode_note"] = res["ui"]["text"][0]
        inv = m["VInvDDIMInvert"]().invert(out["model"], out["cond"], out["latent"], 6, 1.0, False, 20, 1e-7,
                                           "anderson", 1.0, "fp32")
        out["traj"], out["noise"] = inv["result"]
        out["summary"] = inv["ui"]["vinv_trajectory"][0]
        out["rec"], = m["VInvDDIMSample"]().sample(out["model"], out["cond"], out["noise"], 6, 1.0, False,
                                                   "conditioning")
        out["patched"], = m["VInvReferenceAttention"]().patch(out["model"], out["traj"], "all", 0.0, 1.0, 1.0, True,
                                                              "all", "source", guide="trajectory")
        g = m["VInvGuidedSample"]().sample(out["patched"], out["edit"], 1.0, False, "inverted", 0, "conditioning")
        out["guided"], out["mask_frames"] = g["result"]
        out["window"] = g["ui"]["vinv_guidance"][0]
        out["decoded"], = m["VInvVAEDecode"]().decode(out["model"], out["guided"], "auto")
        out["saved"] = m["VInvSaveTrajectory"]().save(out["traj"], "trajectories/test")["ui"]["vinv_saved"][0]
        yield out
    finally:
        host._FALLBACK_DIRS.clear()
        host._FALLBACK_DIRS.update(saved)


def test_graph_shapes_and_notes(graph):
    assert graph["frames"].shape == (9, 48, 48, 3)
    assert "11 frames given, first 9 used" in graph["encode_note"] and "centre-cropped to 48x48" in graph["encode_note"]
    assert graph["latent"]["samples"].shape == (1, 3, 8, 6, 6)
    assert graph["summary"]["steps"] == 6 and graph["summary"]["latent_shape"] == [1, 3, 8, 6, 6]
    assert graph["decoded"].shape == (9, 48, 48, 3)
    assert graph["window"]["active"] == list(range(6))


def test_graph_reconstructs(graph):
    x0 = graph["latent"]["samples"]
    assert float((graph["rec"]["samples"] - x0).norm() / x0.norm()) < 1e-4
    assert graph["model"].reference is None and graph["patched"].reference is not None


def node_defaults(node) -> dict:
    spec = node.INPUT_TYPES()
    return {k: v[1]["default"] for part in ("required", "optional") for k, v in spec.get(part, {}).items()
            if len(v) > 1 and "default" in v[1]}


def test_node_defaults_reconstruct_with_the_source_prompt(pack, graph):
    """Reference Attention and Guided Sample at their node defaults (the family's measured chain: on a CogVideoX
    text-to-video model weight 8 in the first 40 % of the steps, the one-call guide, the difference mask; issue 36)
    give the source latent back with the source prompt: the mask is empty, so every step ends on the guide's
    latent and the last one is the source."""
    m = pack.NODE_CLASS_MAPPINGS
    defaults = node_defaults(m["VInvReferenceAttention"])
    assert defaults["weight"] == -1.0 and defaults["end"] == 0.4 and defaults["start"] == 0.0
    assert defaults["guide"] == "auto"
    patched, = m["VInvReferenceAttention"]().patch(graph["model"], graph["traj"], **defaults)
    assert patched.reference.guide is not None and patched.reference.guide.made is None  # made by Guided Sample
    guided = {k: v for k, v in node_defaults(m["VInvGuidedSample"]).items() if k not in ("guidance", "seed")}
    assert guided["mask_level"] == 0.0 and guided["start"] == "fresh in mask"
    g = m["VInvGuidedSample"]().sample(patched, graph["cond"], 1.0, seed=0, **guided)
    window = g["ui"]["vinv_guidance"][0]
    assert window["active"] == [0, 1, 2] and window["weight"] == 8.0  # 6 steps: i / 6 < 0.4
    assert window["guide"] == "one-call" and window["mask_level"] == 0.9 and window["mask_fraction"] == 0
    made = patched.reference.guide.made
    assert made.iterations == 0 and torch.equal(made.clean, graph["traj"].clean)
    x0 = graph["latent"]["samples"]
    assert float((g["result"][0]["samples"] - x0).norm() / x0.norm()) < 1e-6


def test_guided_sample_fresh_noise_in_the_mask(pack, graph):
    """start 'fresh in mask': fresh noise inside the edit mask, the inverted noise outside. With the source prompt
    the difference mask is empty and the source comes back exactly; a MASK of ones is the fresh start, of zeros
    the inverted one; without a mask it is the inverted start, and the panel says which start ran."""
    m = pack.NODE_CLASS_MAPPINGS
    sample = m["VInvGuidedSample"]().sample

    def run(cond, start, **kw):
        out = sample(graph["patched"], cond, 1.0, False, start, 7, "conditioning", **kw)
        return out["result"][0]["samples"], out["ui"]["vinv_guidance"][0]

    x0 = graph["traj"].clean
    same, window = run(graph["cond"], "fresh in mask")
    assert window["start"] == "fresh in mask" and window["mask_fraction"] == 0
    assert float((same - x0).norm() / x0.norm()) < 1e-5
    edited, window = run(graph["edit"], "fresh in mask")
    inverted, _ = run(graph["edit"], "inverted")
    assert window["start"] == "fresh in mask" and 0 < window["mask_fraction"] < 1
    assert not torch.equal(edited, inverted)
    ones, zeros = torch.ones(48, 48), torch.zeros(48, 48)
    assert torch.equal(run(graph["edit"], "fresh in mask", mask=ones)[0], run(graph["edit"], "fresh", mask=ones)[0])
    assert torch.equal(run(graph["edit"], "fresh in mask", mask=zeros)[0],
                       run(graph["edit"], "inverted", mask=zeros)[0])
    unmasked, window = run(graph["edit"], "fresh in mask", mask_threshold=0.0)
    assert window["start"] == "inverted"
    assert torch.equal(unmasked, run(graph["edit"], "inverted", mask_threshold=0.0)[0])
    attention_mask = run(graph["edit"], "fresh in mask", mask_source="attention", mask_cut="quantile")[1]
    assert attention_mask["start"] == "inverted"  # the attention map is made during sampling
    late, window = run(graph["edit"], "fresh in mask", start_at=0.5)  # from the trajectory's latent: no noise
    assert window["start"] == "inverted" and torch.equal(late, run(graph["edit"], "inverted", start_at=0.5)[0])


def test_one_call_trajectory_reconstructs_through_the_difference_mask(pack, graph):
    """DDIM Invert with iterations 0 (the one-call trajectory the CogVideoX edit workflow guides from, issue 36):
    plain sampling from its noise does not give the source back; the node defaults' chain with the source prompt
    does, exactly: the difference mask is empty, so every step ends on the trajectory's own latent and the last
    one is the source. With the edit prompt the chain edits."""
    m = pack.NODE_CLASS_MAPPINGS
    inv = m["VInvDDIMInvert"]().invert(graph["model"], graph["cond"], graph["latent"], 6, 1.0, False, 0, 1e-5,
                                       "anderson", 1.0, "fp32")
    traj, noise = inv["result"]
    x0 = graph["latent"]["samples"]
    plain, = m["VInvDDIMSample"]().sample(graph["model"], graph["cond"], noise, 6, 1.0, False, "conditioning")
    assert float((plain["samples"] - x0).norm() / x0.norm()) > 1e-3
    patched, = m["VInvReferenceAttention"]().patch(graph["model"], traj, **node_defaults(m["VInvReferenceAttention"]))
    assert patched.reference.guide is None  # the trajectory is a one-call one already
    sample = m["VInvGuidedSample"]().sample
    same = sample(patched, graph["cond"], 5.0, False, "fresh in mask", 0, "conditioning")
    window = same["ui"]["vinv_guidance"][0]
    assert window["start"] == "fresh in mask" and window["mask_fraction"] == 0
    assert float((same["result"][0]["samples"] - x0).norm() / x0.norm()) < 1e-6
    edited = sample(patched, graph["edit"], 5.0, False, "fresh in mask", 0, "conditioning")
    assert 0 < edited["ui"]["vinv_guidance"][0]["mask_fraction"] < 1
    assert float((edited["result"][0]["samples"] - x0).norm() / x0.norm()) > 1e-3
    # the exact trajectory with the default guide ('auto': one-call on CogVideoX) runs the same chain, to the bit
    auto, = m["VInvReferenceAttention"]().patch(graph["model"], graph["traj"],
                                                **node_defaults(m["VInvReferenceAttention"]))
    from_exact = sample(auto, graph["edit"], 5.0, False, "fresh in mask", 0, "conditioning")
    assert from_exact["ui"]["vinv_guidance"][0]["guide"] == "one-call"
    assert torch.equal(from_exact["result"][0]["samples"], edited["result"][0]["samples"])
    # without the difference mask the exact trajectory is followed (its own noise reconstructs)
    unmasked = sample(auto, graph["cond"], 1.0, False, "inverted", 0, "conditioning", mask_threshold=0.0)
    assert unmasked["ui"]["vinv_guidance"][0]["guide"] == "trajectory"
    assert float((unmasked["result"][0]["samples"] - x0).norm() / x0.norm()) < 1e-4


def test_loader_lists_bundled_first_then_folders(pack, graph):
    options = pack.NODE_CLASS_MAPPINGS["VInvLoadCogVideoX"].INPUT_TYPES()["required"]["model"][0]
    assert options[0] == "tiny-cogvideox (bundled)"


def test_load_trajectory_node_round_trip(pack, graph):
    host = pack.nodes.host
    m = pack.NODE_CLASS_MAPPINGS
    saved = graph["saved"]
    name = f"{saved['subfolder']}/{saved['filename']} [output]"
    assert name in m["VInvLoadTrajectory"].INPUT_TYPES()["required"]["file"][0]
    res = m["VInvLoadTrajectory"]().load(graph["model"], name)
    traj, noise = res["result"]
    assert torch.equal(traj.latents, graph["traj"].latents)
    assert torch.equal(noise["samples"], graph["noise"]["samples"])
    assert host.annotated_path(name).is_file()


def test_text_truncation_warning_reaches_the_ui(pack, graph):
    res = pack.NODE_CLASS_MAPPINGS["VInvEncodeText"]().encode(graph["model"], "red circle " * 30, "")
    assert res["ui"]["text"][0].startswith("Prompt longer than 12 tokens")


def test_first_frame_on_a_text_to_video_model_is_refused(pack, graph):
    from vidinv_pack.vidinv import errors
    with pytest.raises(errors.InputError, match="text-to-video model: it takes no first frame"):
        pack.NODE_CLASS_MAPPINGS["VInvGuidedSample"]().sample(graph["patched"], graph["edit"], 1.0, False,
                                                              "inverted", 0, "conditioning",
                                                              first_frame=torch.rand(1, 48, 48, 3))



def test_invert_node_says_when_steps_stop_above_the_tolerance(pack, graph):
    """Issue 22: one refinement per step cannot reach 1e-9 in fp32; the summary names the steps."""
    m = pack.NODE_CLASS_MAPPINGS
    inv = m["VInvDDIMInvert"]().invert(graph["model"], graph["cond"], graph["latent"], 4, 1.0, False, 1, 1e-9,
                                       "plain", 1.0, "fp32")
    summary = inv["ui"]["vinv_trajectory"][0]
    traj = inv["result"][0]
    assert traj.above_tolerance and traj.above_tolerance == [k for k, r in enumerate(traj.residuals) if r > 1e-9]
    assert [a["step"] for a in summary["above_tolerance"]] == [k + 1 for k in traj.above_tolerance]
    assert summary["warning"].startswith(f"{len(traj.above_tolerance)} of 4 inversion steps ended above the tolerance")
    assert "'anderson'" in summary["warning"]
    graph_above = [k + 1 for k, r in enumerate(graph["summary"]["residuals"]) if r > 1e-7]  # the graph's own run
    assert [a["step"] for a in graph["summary"]["above_tolerance"]] == graph_above
    assert bool(graph["summary"]["warning"]) == bool(graph_above)


def test_edit_friendly_nodes_reconstruct_and_the_other_kind_is_refused(pack, graph):
    """Edit-Friendly Invert -> Edit-Friendly Sample reconstructs; its noise on DDIM Sample and an exact
    trajectory on Edit-Friendly Sample are refused with the node to use instead."""
    from vidinv_pack.vidinv import errors
    m, model = pack.NODE_CLASS_MAPPINGS, graph["model"]
    inv = m["VInvFriendlyInvert"]().invert(model, graph["cond"], graph["latent"], 6, 3.0, 7, "fp32")
    traj, noise = inv["result"]
    assert inv["ui"]["vinv_trajectory"][0]["kind"] == "edit-friendly" and sum(traj.calls) == 6
    x0 = graph["latent"]["samples"]
    rec, = m["VInvFriendlySample"]().sample(model, traj, graph["cond"], 3.0, "conditioning")
    assert float((rec["samples"] - x0).norm() / x0.norm()) < 1e-5
    edit, = m["VInvFriendlySample"]().sample(model, traj, graph["edit"], 3.0, "source prompt")
    assert float((edit["samples"] - x0).norm() / x0.norm()) > 1e-3
    patched, = m["VInvReferenceAttention"]().patch(model, traj, "all", 0.0, 1.0, 4.0, True, "all", "source")
    guided, _ = m["VInvGuidedSample"]().sample(patched, graph["cond"], 3.0, False, "inverted", 0,
                                               "conditioning")["result"]
    assert float((guided["samples"] - rec["samples"]).norm() / x0.norm()) < 1e-5
    default = m["VInvGuidedSample"]().sample(patched, graph["edit"], 3.0, False, "fresh in mask", 0, "conditioning")
    assert default["ui"]["vinv_guidance"][0]["start"] == "inverted"  # the noise maps belong to their own latents
    late = m["VInvFriendlyInvert"]().invert(model, graph["cond"], graph["latent"], 6, 3.0, 7, "fp32", start_at=0.5)
    part = late["result"][0]
    assert late["ui"]["vinv_trajectory"][0]["first_step"] == 3 and sum(part.calls) == 3
    rec_late, = m["VInvFriendlySample"]().sample(model, part, graph["cond"], 3.0, "conditioning")  # from step 3
    assert float((rec_late["samples"] - x0).norm() / x0.norm()) < 1e-5
    patched_late, = m["VInvReferenceAttention"]().patch(model, part, "all", 0.0, 1.0, 4.0, True, "all", "source")
    out = m["VInvGuidedSample"]().sample(patched_late, graph["cond"], 3.0, False, "inverted", 0, "conditioning")
    assert float((out["result"][0]["samples"] - x0).norm() / x0.norm()) < 1e-5
    assert out["ui"]["vinv_guidance"][0]["first_step"] == 3 and min(out["ui"]["vinv_guidance"][0]["active"]) == 3
    with pytest.raises(errors.InputError, match="noise of an edit-friendly trajectory"):
        m["VInvDDIMSample"]().sample(model, graph["cond"], noise, 6, 3.0, False, "conditioning")
    with pytest.raises(errors.InputError, match="needs an edit-friendly trajectory; this one is exact"):
        m["VInvFriendlySample"]().sample(model, graph["traj"], graph["cond"], 3.0, "conditioning")
    with pytest.raises(errors.InputError, match="Null-text inversion needs an exact trajectory"):
        m["VInvNullTextInversion"]().optimise(model, traj, 3.0, 1, 0.05, 1e-5, "auto")


def test_guided_sample_masks_and_shows_the_mask(pack, graph):
    """Guided Sample's edit_mask output: by default (any threshold above 0) the prediction-difference
    mask cut at Otsu's level (the panel gives its fraction); all white with threshold 0; at a quantile;
    the attention mask's frames (another map); unknown options refused; a given MASK in the edit's
    place."""
    from vidinv_pack.vidinv import errors
    m = pack.NODE_CLASS_MAPPINGS

    def run(**mask):
        return m["VInvGuidedSample"]().sample(graph["patched"], graph["edit"], 1.0, False, "inverted", 0,
                                              "conditioning", **mask)

    frames = graph["mask_frames"]  # the graph's Guided Sample ran with the defaults
    assert frames.shape == graph["frames"].shape and 0 < float(frames.mean()) < 0.7
    assert graph["window"]["mask_fraction"] == pytest.approx(float(frames.mean()), abs=0.02)
    assert run(mask_threshold=0.3)["result"][1].equal(frames)  # Otsu's cut: any threshold above 0 is the same
    off = run(mask_threshold=0.0)
    assert off["result"][1].eq(1).all() and "mask_fraction" not in off["ui"]["vinv_guidance"][0]
    fifth = run(mask_threshold=0.8, mask_cut="quantile")
    assert 0.15 < float(fifth["result"][1].mean()) < 0.4
    a = run(mask_threshold=0.9, mask_source="attention", mask_cut="quantile")
    assert 0 < a["ui"]["vinv_guidance"][0]["mask_fraction"] < 0.5 and not a["result"][1].eq(fifth["result"][1]).all()
    with pytest.raises(errors.InputError, match="mask source 'text'"):
        run(mask_threshold=0.9, mask_source="text")
    with pytest.raises(errors.InputError, match="mask cut 'edges'"):
        run(mask_threshold=0.9, mask_cut="edges")
    zero = torch.zeros(48, 48)
    kept, shown = m["VInvGuidedSample"]().sample(graph["patched"], graph["edit"], 1.0, False, "inverted", 0,
                                                 "conditioning", mask=zero)["result"]
    x0 = graph["traj"].clean
    assert float((kept["samples"] - x0).norm() / x0.norm()) < 1e-5 and shown.eq(0).all()
