"""Write the example workflows in ComfyUI's two formats from one description of each graph:
the UI format the editor loads (nodes, links, groups, widgets_values) in workflows/, and the API
format its Queue button sends to ``POST /prompt`` in workflows/api/ (what the host tests and the
demo queue; the browser test checks that the frontend's own prompt equals it).

    python tools/build_workflows.py        # -> workflows/*.json, workflows/api/*.json

ComfyUI lists a pack's workflows/*.json as templates; the API files sit one folder down, which it
does not list (app/custom_node_manager.py globs ``*/workflows/*.json``).

Our nodes' sockets and widget order come from the node classes themselves (an input with a widget
spec, a combo list or a default, is a widget; the browser test holds this against the frontend); the
few core nodes used are described below as ComfyUI 0.3.75 declares them. Every node gets an
explicit title (core display names differ between versions: 0.33.0 renamed ImageStitch and
SaveLatent) and every knob a note.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API = WORKFLOWS / "api"


class Shape(NamedTuple):
    title: str  # the display name: the node's title in the editor and its _meta title in the API form
    sockets: list  # [(name, type)]: inputs fed only by links
    widgets: list  # [name] in the editor's order
    outputs: list  # [(name, type)]
    extras: dict  # {widget: [values]}: what the editor stores after a widget's own value


# core nodes, as ComfyUI 0.3.75 declares them (LoadVideo/LoadImage store their upload button's value)
CORE = {
    "LoadVideo": Shape("Load Video", [], ["file"], [("VIDEO", "VIDEO")], {"file": ["image"]}),
    "GetVideoComponents": Shape("Get Video Components", [("video", "VIDEO")], [],
                                [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], {}),
    "CreateVideo": Shape("Create Video", [("images", "IMAGE"), ("audio", "AUDIO")], ["fps"], [("VIDEO", "VIDEO")], {}),
    "SaveVideo": Shape("Save Video", [("video", "VIDEO")], ["filename_prefix", "format", "codec"], [], {}),
    "SaveImage": Shape("Save Image", [("images", "IMAGE")], ["filename_prefix"], [], {}),
    "SaveLatent": Shape("SaveLatent", [("samples", "LATENT")], ["filename_prefix"], [], {}),
    "LoadImage": Shape("Load Image", [], ["image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")], {"image": ["image"]}),
    "UNETLoader": Shape("Load Diffusion Model", [], ["unet_name", "weight_dtype"], [("MODEL", "MODEL")], {}),
    "CLIPLoader": Shape("Load CLIP", [], ["clip_name", "type", "device"], [("CLIP", "CLIP")], {}),
    "CLIPTextEncode": Shape("CLIP Text Encode (Prompt)", [("clip", "CLIP")], ["text"],
                            [("CONDITIONING", "CONDITIONING")], {}),
    "VAELoader": Shape("Load VAE", [], ["vae_name"], [("VAE", "VAE")], {}),
    "VAEEncode": Shape("VAE Encode", [("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")], {}),
    "VAEDecode": Shape("VAE Decode", [("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")], {}),
    "BasicScheduler": Shape("BasicScheduler", [("model", "MODEL")], ["scheduler", "steps", "denoise"],
                            [("SIGMAS", "SIGMAS")], {}),
    "CFGGuider": Shape("CFGGuider", [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                       ["cfg"], [("GUIDER", "GUIDER")], {}),
    "KSamplerSelect": Shape("KSamplerSelect", [], ["sampler_name"], [("SAMPLER", "SAMPLER")], {}),
    "SamplerCustomAdvanced": Shape("SamplerCustomAdvanced", [("noise", "NOISE"), ("guider", "GUIDER"),
                                                             ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                                                             ("latent_image", "LATENT")], [],
                                   [("output", "LATENT"), ("denoised_output", "LATENT")], {}),
    "ImageStitch": Shape("Image Stitch", [("image1", "IMAGE"), ("image2", "IMAGE")],
                         ["direction", "match_image_size", "spacing_width", "spacing_color"], [("IMAGE", "IMAGE")], {}),
}


def load_pack():
    spec = importlib.util.spec_from_file_location("vidinv_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vidinv_pack"] = mod
    spec.loader.exec_module(mod)
    return mod


def has_widget_spec(spec) -> bool:
    """A combo list, or options with a default: what the editor draws as a widget."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return isinstance(spec[0], list) or ("default" in opts and not opts.get("forceInput"))


def describe(node_type: str, pack) -> Shape:
    if node_type in CORE:
        return CORE[node_type]
    cls = pack.NODE_CLASS_MAPPINGS[node_type]
    sockets, widgets, extras = [], [], {}
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            if has_widget_spec(spec):
                widgets.append(name)
                if name in ("seed", "noise_seed"):  # the editor's "control after generate" value
                    extras[name] = ["fixed"]
            else:
                sockets.append((name, spec[0]))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return Shape(pack.NODE_DISPLAY_NAME_MAPPINGS[node_type], sockets, widgets, list(zip(names, cls.RETURN_TYPES)),
                 extras)


class Workflow:
    def __init__(self, pack):
        self.pack = pack
        self.nodes, self.links, self.groups = [], [], []
        self.widgets: dict[int, dict] = {}  # node id -> {widget: value}, for the API form

    def add(self, node_type: str, pos, widgets: dict | None = None, title: str | None = None, size=(320, 120),
            mode: int = 0) -> int:
        shape = describe(node_type, self.pack)
        cls = self.pack.NODE_CLASS_MAPPINGS.get(node_type)
        defaults = {}
        if cls is not None:
            for section in ("required", "optional"):
                for name, spec in cls.INPUT_TYPES().get(section, {}).items():
                    opts = spec[1] if len(spec) > 1 else {}
                    first = spec[0][0] if isinstance(spec[0], list) and spec[0] else None
                    defaults[name] = opts.get("default", first)
        widgets = widgets or {}
        unknown = set(widgets) - set(shape.widgets)
        if unknown:
            raise KeyError(f"{node_type} has no widgets {unknown}")
        chosen, values = {}, []
        for name in shape.widgets:
            value = widgets.get(name, defaults.get(name))
            if value is None:
                raise ValueError(f"{node_type}.{name} needs an explicit value")
            chosen[name] = value
            values += [value, *shape.extras.get(name, [])]
        node = {"id": len(self.nodes) + 1, "type": node_type, "title": title or shape.title, "pos": list(pos),
                "size": list(size), "flags": {}, "order": len(self.nodes), "mode": mode,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in shape.sockets],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                            for i, (n, t) in enumerate(shape.outputs)],
                "properties": {"Node name for S&R": node_type}, "widgets_values": values}
        self.nodes.append(node)
        self.widgets[node["id"]] = chosen
        return node["id"]

    def set_mode(self, node_types: set, mode: int) -> "Workflow":
        """Mute (2) or enable (0) every node of these types, as Ctrl+M does."""
        for node in self.nodes:
            if node["type"] in node_types:
                node["mode"] = mode
        return self

    def note(self, text: str, pos, size=(320, 160)) -> int:
        node = {"id": len(self.nodes) + 1, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
        self.nodes.append(node)
        return node["id"]

    def connect(self, src: int, output: str, dst: int, input_name: str) -> None:
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, o in enumerate(s["outputs"]) if o["name"] == output)
        kind = s["outputs"][slot]["type"]
        if not any(inp["name"] == input_name for inp in d["inputs"]):  # a widget fed by a link
            d["inputs"].append({"name": input_name, "type": kind, "link": None, "widget": {"name": input_name}})
        tslot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        link_id = len(self.links) + 1
        self.links.append([link_id, src, slot, dst, tslot, kind])
        s["outputs"][slot]["links"].append(link_id)
        d["inputs"][tslot]["link"] = link_id

    def group(self, title: str, x, y, w, h, color="#3f789e") -> None:
        self.groups.append({"title": title, "bounding": [x, y, w, h], "color": color, "font_size": 24, "flags": {}})

    def json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}}, "version": 0.4}

    def api(self) -> dict:
        """The API form of the graph: what the editor's Queue button sends for it. Notes and muted
        nodes are not sent; a widget fed by a link sends the link."""
        live = {n["id"] for n in self.nodes if n["type"] != "Note" and n["mode"] == 0}
        prompt = {}
        for node in self.nodes:
            if node["id"] not in live:
                if node["mode"] not in (0, 2):
                    raise ValueError(f"node {node['id']}: only enabled (0) and muted (2) nodes are described")
                continue
            inputs = dict(self.widgets[node["id"]])
            for inp in node["inputs"]:
                if inp["link"] is not None:
                    _, src, slot, *_ = self.links[inp["link"] - 1]
                    if src not in live:
                        raise ValueError(f"{node['title']}.{inp['name']} is fed by a muted node")
                    inputs[inp["name"]] = [str(src), slot]
            prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": node["title"]}}
        return prompt


SAMPLE = "vinv_red_circle_right.mp4"
SOURCE_PROMPT = "a red circle moving right"
EDIT_PROMPT = "a green circle moving right"


def source_section(wf: Workflow, x=0, y=0, model_name: str | None = None, loader: str = "VInvLoadCogVideoX"):
    """LoadVideo -> GetVideoComponents -> model -> VAE encode. Returns node ids."""
    video = wf.add("LoadVideo", (x, y + 40), {"file": SAMPLE}, size=(300, 320))
    parts = wf.add("GetVideoComponents", (x, y + 400), size=(300, 90))
    wf.connect(video, "VIDEO", parts, "video")
    model = wf.add(loader, (x + 340, y + 40), {"model": model_name} if model_name else None, size=(340, 110))
    enc = wf.add("VInvVAEEncode", (x + 340, y + 200), size=(340, 230))
    wf.connect(model, "model", enc, "model")
    wf.connect(parts, "images", enc, "images")
    return video, parts, model, enc


def save_section(wf: Workflow, images_node: int, images_output: str, parts: int, x, y, prefix: str,
                 title: str | None = None):
    """CreateVideo (at the source's frame rate) -> SaveVideo."""
    create = wf.add("CreateVideo", (x, y), {"fps": 8.0}, size=(260, 80))
    wf.connect(images_node, images_output, create, "images")
    wf.connect(parts, "fps", create, "fps")
    save = wf.add("SaveVideo", (x, y + 130), {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
                  title=title, size=(300, 340))
    wf.connect(create, "VIDEO", save, "video")
    return create, save


def encode_decode(pack) -> Workflow:
    wf = Workflow(pack)
    wf.group("1. Source video and model", -20, -40, 720, 560)
    video, parts, model, enc = source_section(wf)
    wf.group("2. Decode and save", 720, -40, 760, 560, "#8a8")
    dec = wf.add("VInvVAEDecode", (740, 40), size=(300, 100))
    wf.connect(model, "model", dec, "model")
    wf.connect(enc, "latent", dec, "latent")
    save_section(wf, dec, "images", parts, 740, 180, "vinv/encode_decode")
    png = wf.add("SaveImage", (1080, 40), {"filename_prefix": "vinv/encode_decode_frames"}, size=(360, 300))
    wf.connect(dec, "images", png, "images")
    wf.note("VAE round trip of the sample video on the bundled tiny CogVideoX.\n\n"
            "VAE Encode: 'frames' trims to 4k+1 frames (CogVideoX's temporal grid) or stops with an error; "
            "'size' fits the frames to width x height (0 = the model's native size; multiples of 16 for "
            "CogVideoX); 'tiling' saves memory on large frames.\n\nThe PNG frames are lossless, for measuring.",
            (0, 560), (700, 170))
    return wf


def text_section(wf: Workflow, model: int, x, y, prompt: str, title: str, node_type: str = "VInvEncodeText") -> int:
    node = wf.add(node_type, (x, y), {"prompt": prompt, "negative_prompt": ""}, title=title, size=(340, 200))
    wf.connect(model, "model", node, "model")
    return node


def invert_section(wf: Workflow, model: int, cond: int, enc: int, x, y, node_type: str = "VInvDDIMInvert",
                   widgets: dict | None = None) -> int:
    inv = wf.add(node_type, (x, y), widgets, size=(340, 420))
    wf.connect(model, "model", inv, "model")
    wf.connect(cond, "conditioning", inv, "conditioning")
    wf.connect(enc, "latent", inv, "latent")
    return inv


def decode(wf: Workflow, model: int, latent_node: int, output: str, x, y, title: str) -> int:
    dec = wf.add("VInvVAEDecode", (x, y), title=title, size=(300, 80))
    wf.connect(model, "model", dec, "model")
    wf.connect(latent_node, output, dec, "latent")
    return dec


INVERT_NOTE = ("DDIM Invert (exact): 'steps' is the DDIM grid (sample with the same number); 'guidance' is "
               "applied identically when inverting and sampling, so the round trip stays exact (1 = off); "
               "'iterations' refine each inverse step (0 = the naive DDIM inverse); 'tolerance' stops refining "
               "once the step's residual is below it; 'solver' anderson converges where plain iteration "
               "stalls; 'trajectory_dtype' fp16/bf16 halves the memory of the stored latents. The node plots "
               "the residual of every step.")


WAN_INVERT_NOTE = ("Flow Invert (Wan, exact): 'steps' is the Euler grid on the model's shifted sigmas (sample "
                   "with the same number); 'guidance' is applied identically when inverting and sampling, so the "
                   "round trip stays exact (1 = off); 'iterations' refine each inverse step x_i = x_next - "
                   "(sigma_next - sigma_i) v(x_i) (0 = the naive inverse Euler step); 'tolerance' stops refining "
                   "once the step's residual is below it. The node plots the residual of every step. The edit below "
                   "runs the node defaults, Wan's measured chain: Reference Attention's weight -1 is 4 here (in the "
                   "first 40 % of the steps) and Guided Sample's mask_level 0 is 0.6 x Otsu's level, the chain that "
                   "held the edited colour and kept the layout on the most Wans measured at 16 videos (BENCHMARKS "
                   "section 6, \"Sixteen videos\"); weight 0 skips the reference pass (fewer calls, a looser path).")
# The CogVideoX edit workflow guides its edit by the one-call trajectory (issue 36, session 15; BENCHMARKS section 6,
# "The one-call trajectory as the guide"): higher mask IoU and a closer path than the exact one on all eight CogVideoX
# models measured; with the source prompt the chain still gives the source back exactly (the difference mask is empty,
# so every step ends on the trajectory's own latent). Its reconstruction check is therefore the guided chain itself.
ONE_CALL_INVERT = {"iterations": 0}
ONE_CALL_NOTE = ("DDIM Invert with 'iterations' 0: the naive inverse on the model's own schedule, one model call per "
                 "step, the edit's guide. Its latents stay closer to the source than the exact inversion's, and on "
                 "CogVideoX they guide an edit better (BENCHMARKS section 6). Its noise alone does not give the source "
                 "back; the chain does: with the source prompt Guided Sample's difference mask is empty, so every "
                 "step ends on the trajectory's own latent and the last one is the source (group 3, the check). For "
                 "an exact trajectory (the reconstruct workflow, plain DDIM Sample, saving it for later) set "
                 "'iterations' to 10: Reference Attention's guide 'auto' then makes this one-call inversion "
                 "itself (the same edit, one more call per step).")


# the node types of each family's edit workflow: loader, text encoder, invert, plain sample, and the notes
COGVIDEOX_EDIT = {"loader": "VInvLoadCogVideoX", "text": "VInvEncodeText", "invert": "VInvDDIMInvert",
                  "sample": "VInvDDIMSample", "sample_title": "DDIM Sample (reconstruct)", "note": INVERT_NOTE}
WAN_EDIT = {"loader": "VInvLoadWan", "text": "VInvWanEncodeText", "invert": "VInvWanInvert",
            "sample": "VInvWanSample", "sample_title": "Flow Sample (reconstruct)", "note": WAN_INVERT_NOTE}


def reconstruct(pack) -> Workflow:
    wf = Workflow(pack)
    wf.group("1. Source video, model and prompt", -20, -40, 720, 800)
    video, parts, model, enc = source_section(wf)
    cond = text_section(wf, model, 340, 480, SOURCE_PROMPT, "Source prompt")
    wf.group("2. Exact inversion", 720, -40, 380, 800, "#a1309b")
    inv = invert_section(wf, model, cond, enc, 740, 40)
    wf.note(INVERT_NOTE, (740, 500), (340, 250))
    wf.group("3. Sample back and compare", 1120, -40, 760, 800, "#8a8")
    samp = wf.add("VInvDDIMSample", (1140, 40), {"steps": 50, "guidance": 1.0}, size=(320, 200))
    wf.connect(model, "model", samp, "model")
    wf.connect(cond, "conditioning", samp, "conditioning")
    wf.connect(inv, "noise", samp, "latent")
    dec = decode(wf, model, samp, "latent", 1140, 280, "Decode reconstruction")
    stitch = wf.add("ImageStitch", (1500, 40), {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                                 "spacing_color": "white"}, title="Source | reconstruction",
                    size=(300, 150))
    wf.connect(enc, "frames", stitch, "image1")
    wf.connect(dec, "images", stitch, "image2")
    save_section(wf, stitch, "IMAGE", parts, 1500, 240, "vinv/reconstruct_side_by_side")
    wf.note("DDIM Sample uses the same steps, guidance and prompt as the inversion: the result equals the "
            "source latent up to the residuals plotted on DDIM Invert. Left: the frames that were encoded; "
            "right: the reconstruction.", (1140, 400), (330, 150))
    return wf


def edit_graph(pack, model_name: str | None = None, kinds: dict = COGVIDEOX_EDIT,
               guided_widgets: dict | None = None, reference_widgets: dict | None = None,
               one_call: bool = False) -> tuple[Workflow, dict]:
    """Source, prompts, inversion, reconstruction check, edit. `one_call`: the edit is guided by the one-call
    trajectory (ONE_CALL_INVERT) and the check is Guided Sample with the source prompt, not the plain sampler."""
    wf = Workflow(pack)
    wf.group("1. Source video, model and prompts", -20, -40, 720, 1040)
    video, parts, model, enc = source_section(wf, model_name=model_name, loader=kinds["loader"])
    src = text_section(wf, model, 340, 480, SOURCE_PROMPT, "Source prompt", kinds["text"])
    edit = text_section(wf, model, 340, 720, EDIT_PROMPT, "Edited prompt", kinds["text"])
    wf.note("Edit the second prompt; the first one must describe the source video (it is the inversion's "
            "conditioning and the reference stream's).", (0, 740), (320, 120))
    wf.group("2. One-call inversion (the edit's guide)" if one_call else "2. Exact inversion", 720, -40, 380, 1040,
             "#a1309b")
    inv = invert_section(wf, model, src, enc, 740, 40, kinds["invert"], ONE_CALL_INVERT if one_call else None)
    wf.note(ONE_CALL_NOTE if one_call else kinds["note"], (740, 500), (340, 250))
    wf.group("3. Reconstruction (the check)", 1120, -40, 380, 520, "#8a8")
    if not one_call:
        samp = wf.add(kinds["sample"], (1140, 40), {"steps": 50, "guidance": 1.0}, title=kinds["sample_title"],
                      size=(330, 200))
        wf.connect(model, "model", samp, "model")
        wf.connect(src, "conditioning", samp, "conditioning")
        wf.connect(inv, "noise", samp, "latent")
        rec = decode(wf, model, samp, "latent", 1140, 300, "Decode reconstruction")
    wf.group("4. Edit with reference attention", 1120, 500, 380, 500, "#b58b2a")
    ref = wf.add("VInvReferenceAttention", (1140, 560), reference_widgets, size=(330, 270))
    wf.connect(model, "model", ref, "model")
    wf.connect(inv, "trajectory", ref, "trajectory")
    if one_call:  # the edit chain with the source prompt: exact through the empty difference mask
        samp = wf.add("VInvGuidedSample", (1140, 40), guided_widgets, title="Guided Sample (reconstruct)",
                      size=(330, 190))
        wf.connect(ref, "model", samp, "model")
        wf.connect(src, "conditioning", samp, "conditioning")
        rec = decode(wf, model, samp, "latent", 1140, 300, "Decode reconstruction")
    guided = wf.add("VInvGuidedSample", (1140, 860), guided_widgets, size=(330, 190))
    wf.connect(ref, "model", guided, "model")
    wf.connect(edit, "conditioning", guided, "conditioning")
    ed = decode(wf, model, guided, "latent", 1140, 1080, "Decode edit")
    picks = sys.modules[pack.__name__ + ".vidinv.family"].measured_picks  # the nodes' own words for the picks
    wf.note("Reference Attention: every attention layer of the sample also attends to the keys and values the "
            "trajectory gives at the same step (RoPE per token group). 'blocks' which transformer blocks "
            "('all', '0-7', '10-'); 'start'/'end' the fraction of steps with injection (default the first 40 %); "
            "'weight' a log-bias on the reference (1 = plain concatenation, 0 = off; the default -1 takes the "
            f"family's measured pick: {picks('weight')}); "
            "'guide' what the edit follows inside the difference mask's chain (auto: the family's pick: "
            f"{picks('guide')}); 'reference_text' "
            "also injects the source prompt's tokens (off by default: they pull the edit back to the source's "
            "colour); 'rows' all CFG rows or only the conditional one; 'reference_conditioning' source (ours) or "
            "edit (the published recipe). Guided Sample: 'guidance' CFG for the edit; 'start' inverted noise "
            "(exact) or fresh noise; 'mask_threshold' > 0 keeps every step on the trajectory outside the "
            "region where the prompt's change acts ('mask_source' difference: where the model's prediction "
            "changes between the two prompts; 'mask_cut' otsu: the part of it that stands out; 'mask_level' scales "
            f"the cut, 0 = the family's: {picks('mask_level')}), "
            "shown by the edit mask output.",
            (1520, 560), (360, 380))
    side_by_side(wf, enc, rec, ed, parts, "edit")
    ids = {"model": model, "parts": parts, "enc": enc, "inv": inv, "rec": rec, "ed": ed, "samp": samp,
           "src": src, "edit": edit, "guided": guided, "ref": ref}
    return wf, ids


def side_by_side(wf: Workflow, enc: int, rec: int, ed: int, parts: int, prefix: str) -> None:
    """Source | reconstruction | edit, stitched and saved as one video."""
    wf.group("5. Outputs", 1520, -40, 760, 560, "#3f789e")
    stitch1 = wf.add("ImageStitch", (1540, 40), {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                                  "spacing_color": "white"}, title="Source | reconstruction",
                     size=(300, 150))
    wf.connect(enc, "frames", stitch1, "image1")
    wf.connect(rec, "images", stitch1, "image2")
    stitch2 = wf.add("ImageStitch", (1540, 220), {"direction": "right", "match_image_size": True,
                                                   "spacing_width": 0, "spacing_color": "white"},
                     title="Source | reconstruction | edit", size=(300, 150))
    wf.connect(stitch1, "IMAGE", stitch2, "image1")
    wf.connect(ed, "images", stitch2, "image2")
    save_section(wf, stitch2, "IMAGE", parts, 1880, 40, f"vinv/{prefix}_side_by_side", "Save side by side")


def measured_outputs(wf: Workflow, ids: dict, prefix: str) -> None:
    """PNG frames and latents the tests and the demo measure, and one video per stage."""
    wf.group("6. Files for measuring", 1520, 960, 760, 640, "#444")  # below the edit section's note
    frames = [("source", ids["enc"], "frames"), ("reconstruction", ids["rec"], "images"), ("edit", ids["ed"], "images")]
    # the edit mask Guided Sample used (all white when it masked nothing): what the edit could change
    places = [(1540, 1020), (1790, 1020), (2040, 1020), (2040, 1320)]
    for (name, node, out), xy in zip([*frames, ("edit mask", ids["guided"], "edit_mask")], places):
        png = wf.add("SaveImage", xy, {"filename_prefix": f"vinv/{prefix}_{name.replace(' ', '_')}"},
                     title=f"Frames: {name}", size=(230, 260))
        wf.connect(node, out, png, "images")
    for i, (name, node, out) in enumerate([("source", ids["enc"], "latent"), ("reconstruction", ids["samp"], "latent")]):
        lat = wf.add("SaveLatent", (1540 + 250 * i, 1320), {"filename_prefix": f"vinv/{prefix}_{name}"},
                     title=f"Latent: {name}", size=(230, 60))
        wf.connect(node, out, lat, "samples")
    for i, (name, node, out) in enumerate(frames):
        save_section(wf, node, out, ids["parts"], 2300 + 340 * i, 40, f"vinv/{prefix}_{name}", f"Save {name}")


# The edit workflows run Reference Attention and Guided Sample at their node defaults: the family's measured chain
# (`EditRecipe`, BENCHMARKS section 6: CogVideoX text-to-video weight 8 from the one-call guide and the mask at 0.9 x
# Otsu's level, Wan text-to-video weight 4 and the mask at 0.6 x Otsu's level, image-to-video weight 2 and
# the mask at Otsu's level), the prediction difference mask, fresh noise inside it, guidance 5. The CogVideoX one
# inverts with one call per step (ONE_CALL_INVERT): the guide 'auto' would make the same trajectory from an exact one.


def edit(pack) -> Workflow:
    wf, ids = edit_graph(pack, one_call=True)
    measured_outputs(wf, ids, "edit")
    return wf


SAVED_TRAJECTORY = "trajectories/red_circle_00001.safetensors [output]"


def trajectory_save_load(pack) -> Workflow:
    """Run 1 inverts and saves; run 2 (muted at first) loads the file and samples it."""
    wf = Workflow(pack)
    wf.group("Shared: source, model, prompt", -20, -40, 720, 800)
    video, parts, model, enc = source_section(wf)
    cond = text_section(wf, model, 340, 480, SOURCE_PROMPT, "Source prompt")
    wf.group("Run 1: invert and save", 720, -40, 380, 800, "#a1309b")
    inv = invert_section(wf, model, cond, enc, 740, 40)
    save = wf.add("VInvSaveTrajectory", (740, 500), {"filename_prefix": "trajectories/red_circle"}, size=(340, 90))
    wf.connect(inv, "trajectory", save, "trajectory")
    wf.group("Run 2: load and sample (muted: Ctrl+M to enable)", 1120, -40, 760, 800, "#8a8")
    load = wf.add("VInvLoadTrajectory", (1140, 40), {"file": SAVED_TRAJECTORY}, size=(340, 110), mode=2)
    wf.connect(model, "model", load, "model")
    samp = wf.add("VInvDDIMSample", (1140, 200), {"steps": 50, "guidance": 1.0}, size=(330, 200), mode=2)
    wf.connect(model, "model", samp, "model")
    wf.connect(cond, "conditioning", samp, "conditioning")
    wf.connect(load, "noise", samp, "latent")
    dec = wf.add("VInvVAEDecode", (1140, 440), title="Decode loaded reconstruction", size=(300, 80), mode=2)
    wf.connect(model, "model", dec, "model")
    wf.connect(samp, "latent", dec, "latent")
    png = wf.add("SaveImage", (1500, 40), {"filename_prefix": "vinv/from_saved_trajectory"}, size=(300, 300), mode=2)
    wf.connect(dec, "images", png, "images")
    wf.note("Run 1 writes output/trajectories/red_circle_00001.safetensors (latents of every step, the "
            "conditioning, the grid and the model's fingerprint). For run 2: mute 'DDIM Invert' and 'Save "
            "Trajectory', unmute the nodes of this group (Ctrl+M), pick the file in Load Trajectory (saved files "
            "are listed with '[output]'), and queue. A file made by another model or on another grid is refused "
            "with the reason.", (1500, 400), (360, 220))
    return wf


def i2v_edit(pack) -> Workflow:
    """Image-to-video editing: the source's first frame conditions the inversion and the reference
    stream; an edited first frame (here: recoloured) conditions the edit."""
    wf, ids = edit_graph(pack, model_name="tiny-cogvideox-i2v (bundled)")
    first = wf.add("LoadImage", (740, 1060), {"image": "vinv_red_circle_right_first_frame_green.png"},
                   title="Edited first frame", size=(300, 330))
    wf.connect(first, "IMAGE", ids["guided"], "first_frame")
    measured_outputs(wf, ids, "i2v_edit")
    wf.note("Image-to-video (CogVideoX-5B-I2V layout): VAE Encode also encodes the source's first frame as the "
            "image conditioning; DDIM Invert and the reference stream use it. Guided Sample's optional "
            "'first_frame' takes an edited first frame (here recoloured green in an image editor) and propagates "
            "the edit through the video; without it the source's first frame conditions the edit.",
            (740, 1410), (360, 200))
    return wf


SVD_EDIT_TEMPORAL = False  # chosen by tools/bench_svd_edit.py
SVD_BUCKET_RIGHT = 127  # the bundled tiny SVD's motion bucket for "moving right" (vidinv/fixture.py BUCKETS)


def svd_edit(pack) -> Workflow:
    """Stable Video Diffusion: invert the source with its own first frame, then propagate an edited
    first frame through the video while reference attention keeps the source's layout and motion."""
    wf = Workflow(pack)
    wf.group("1. Source video, model and first frames", -20, -40, 720, 1180)
    video, parts, model, enc = source_section(wf, model_name="tiny-svd (bundled)", loader="VInvLoadSVD")
    first_widgets = {"motion_bucket_id": SVD_BUCKET_RIGHT}
    src = wf.add("VInvSVDEncodeFirstFrame", (340, 480), first_widgets, title="Source first frame", size=(340, 230))
    wf.connect(model, "model", src, "model")
    wf.connect(enc, "frames", src, "image")
    image = wf.add("LoadImage", (0, 740), {"image": "vinv_red_circle_right_first_frame_green.png"},
                   title="Edited first frame", size=(300, 330))
    edit = wf.add("VInvSVDEncodeFirstFrame", (340, 760), first_widgets, title="Edited first frame (SVD)",
                  size=(340, 230))
    wf.connect(model, "model", edit, "model")
    wf.connect(image, "IMAGE", edit, "image")
    wf.note("Both first frames need the same fps, motion bucket and noise augmentation (the tiny SVD reads "
            "its direction from the motion bucket: left 63, right 127, up 191, down 255). The edited frame "
            "here is the source's first frame recoloured green in an image editor.", (340, 1010), (340, 120))
    wf.group("2. Exact inversion", 720, -40, 380, 1180, "#a1309b")
    inv = wf.add("VInvSVDInvert", (740, 40), size=(340, 330))
    wf.connect(model, "model", inv, "model")
    wf.connect(src, "conditioning", inv, "conditioning")
    wf.connect(enc, "latent", inv, "latent")
    wf.note("Euler Invert (SVD, exact): 'steps' the Euler grid (sample with the same number); guidance 1 -> 1 "
            "is the fastest exact inversion (the edit's guidance is set on Guided Sample); 'iterations' and "
            "'tolerance' refine each inverse step. The node plots the residual of every step.",
            (740, 400), (340, 170))
    wf.group("3. Reconstruction (the check)", 1120, -40, 380, 520, "#8a8")
    samp = wf.add("VInvSVDSample", (1140, 40), title="Euler Sample (reconstruct)", size=(330, 170))
    wf.connect(model, "model", samp, "model")
    wf.connect(src, "conditioning", samp, "conditioning")
    wf.connect(inv, "noise", samp, "latent")
    rec = decode(wf, model, samp, "latent", 1140, 300, "Decode reconstruction")
    wf.group("4. Edit with reference attention", 1120, 500, 380, 640, "#b58b2a")
    ref = wf.add("VInvReferenceAttention", (1140, 560), {"temporal": SVD_EDIT_TEMPORAL, "weight": 4.0, "end": 1.0},
                 size=(330, 300))  # SVD's measured chain (section 5): weight 4 at every step, no prompt mask
    wf.connect(model, "model", ref, "model")
    wf.connect(inv, "trajectory", ref, "trajectory")
    guided = wf.add("VInvSVDGuidedSample", (1140, 890), size=(330, 170))
    wf.connect(ref, "model", guided, "model")
    wf.connect(edit, "conditioning", guided, "conditioning")
    ed = decode(wf, model, guided, "latent", 1140, 1080, "Decode edit")
    wf.note("Reference Attention on SVD: the spatial self-attention of the chosen UNet blocks (and, with "
            "'temporal', the temporal self-attention paired with them) also attends to the keys and values "
            "the trajectory gives at the same step. 'weight' a log-bias on the reference (1 = plain "
            "concatenation); 'start'/'end' the window of steps; the text options do not apply to SVD. Guided "
            "Sample (SVD): SVD's frame-wise guidance (1 -> 3 is its default) with the edited first frame.",
            (1520, 1020), (360, 220))
    side_by_side(wf, enc, rec, ed, parts, "svd_edit")
    measured_outputs(wf, {"parts": parts, "enc": enc, "rec": rec, "ed": ed, "samp": samp, "guided": guided}, "svd_edit")
    return wf


def wan_edit(pack) -> Workflow:
    """The edit workflow on the bundled tiny Wan: the same graph with Wan's loader, text encoder,
    flow inversion and sampler; Reference Attention and Guided Sample are the shared nodes, at their defaults
    (on Wan text-to-video: reference weight 4, the mask at 0.6 x Otsu's level; 2.60 rows per step)."""
    wf, ids = edit_graph(pack, "tiny-wan (bundled)", WAN_EDIT)
    measured_outputs(wf, ids, "wan_edit")
    return wf


# the files of ComfyUI's own Wan 2.1 text-to-video template, in models/diffusion_models, text_encoders and vae
NATIVE_FILES = {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                "vae_name": "wan_2.1_vae.safetensors"}
NATIVE_STEPS, NATIVE_CFG = 30, 5.0
NATIVE_FLOWEDIT_N_MAX = round(NATIVE_STEPS * 33 / 50)  # FlowEdit's window: the paper's 33 of 50 steps


def native_sampler(wf: Workflow, model: int, positive: int, negative: int, noise: int, sigmas: int, latent: int,
                   x, y, title: str) -> int:
    """CFGGuider + KSamplerSelect (euler) + SamplerCustomAdvanced from the inverted noise."""
    guider = wf.add("CFGGuider", (x, y), {"cfg": NATIVE_CFG}, size=(260, 100))
    wf.connect(model, "MODEL" if wf.nodes[model - 1]["type"] == "UNETLoader" else "model", guider, "model")
    wf.connect(positive, "CONDITIONING", guider, "positive")
    wf.connect(negative, "CONDITIONING", guider, "negative")
    pick = wf.add("KSamplerSelect", (x, y + 130), {"sampler_name": "euler"}, size=(260, 60))
    run = wf.add("SamplerCustomAdvanced", (x + 290, y), title=title, size=(280, 160))
    wf.connect(noise, "noise", run, "noise")
    wf.connect(guider, "GUIDER", run, "guider")
    wf.connect(pick, "SAMPLER", run, "sampler")
    wf.connect(sigmas, "SIGMAS", run, "sigmas")
    wf.connect(latent, "LATENT", run, "latent_image")
    return run


def native_wan_edit(pack) -> Workflow:
    """The edit on the models a Wan user already has: core's loaders, text encoder and VAE; Invert (native)
    on core's MODEL; core's SamplerCustomAdvanced reconstructs from the inverted NOISE and, with the
    Reference Attention (native) MODEL and the edited prompt, edits; FlowEdit (native) edits without inversion."""
    wf = Workflow(pack)
    wf.group("1. Models, source video and prompts (core's nodes)", -20, -40, 720, 1100)
    video = wf.add("LoadVideo", (0, 40), {"file": SAMPLE}, size=(300, 320))
    parts = wf.add("GetVideoComponents", (0, 400), size=(300, 90))
    wf.connect(video, "VIDEO", parts, "video")
    unet = wf.add("UNETLoader", (340, 40), {"unet_name": NATIVE_FILES["unet_name"], "weight_dtype": "default"},
                  size=(340, 100))
    clip = wf.add("CLIPLoader", (340, 180), {"clip_name": NATIVE_FILES["clip_name"], "type": "wan",
                                             "device": "default"}, size=(340, 110))
    vae = wf.add("VAELoader", (340, 330), {"vae_name": NATIVE_FILES["vae_name"]}, size=(340, 60))
    enc = wf.add("VAEEncode", (0, 540), size=(300, 60))
    wf.connect(parts, "images", enc, "pixels")
    wf.connect(vae, "VAE", enc, "vae")
    texts = {}
    for i, (key, text, title) in enumerate((("source", SOURCE_PROMPT, "Source prompt"),
                                           ("edit", EDIT_PROMPT, "Edited prompt"), ("negative", "", "Negative prompt"))):
        texts[key] = wf.add("CLIPTextEncode", (340, 430 + 200 * i), {"text": text}, title=title, size=(340, 160))
        wf.connect(clip, "CLIP", texts[key], "clip")
    wf.group("2. Exact inversion of core's Euler sampler", 720, -40, 420, 1100, "#a1309b")
    sigmas = wf.add("BasicScheduler", (740, 40), {"scheduler": "simple", "steps": NATIVE_STEPS, "denoise": 1.0},
                    size=(340, 110))
    wf.connect(unet, "MODEL", sigmas, "model")
    inv = wf.add("VInvNativeInvert", (740, 190), {"cfg": NATIVE_CFG}, size=(380, 420))
    wf.connect(unet, "MODEL", inv, "model")
    wf.connect(texts["source"], "CONDITIONING", inv, "positive")
    wf.connect(texts["negative"], "CONDITIONING", inv, "negative")
    wf.connect(sigmas, "SIGMAS", inv, "sigmas")
    wf.connect(enc, "LATENT", inv, "latent")
    ref = wf.add("VInvNativeReferenceAttention", (740, 650), size=(380, 250))
    wf.connect(unet, "MODEL", ref, "model")
    wf.connect(inv, "trajectory", ref, "trajectory")
    wf.note("Invert (native) runs core's own CFG at the same cfg, SIGMAS and prompts as the samplers on the "
            "right, so SamplerCustomAdvanced (euler) from its NOISE returns the source latent to within the "
            "residuals it plots. Reference Attention (native) patches a clone of the MODEL: the samplers' MODEL "
            "is left as it was. Wan 2.2 A14B: load both experts, connect the low-noise one to Invert (native) with "
            "switch_step, patch each expert, and split the SIGMAS with SplitSigmas at that step (the low-noise "
            "sampler gets DisableNoise).", (740, 930), (380, 170))
    wf.group("3. Reconstruct and edit with core's sampler", 1140, -40, 1000, 1100, "#8a8")
    rec = native_sampler(wf, unet, texts["source"], texts["negative"], inv, sigmas, enc, 1160, 40,
                         "Sample (reconstruct)")
    edit = native_sampler(wf, ref, texts["edit"], texts["negative"], inv, sigmas, enc, 1160, 300,
                          "Sample (edit, reference attention)")
    for run, y, title, prefix in ((rec, 560, "Decode reconstruction", "reconstruction"),
                                  (edit, 700, "Decode edit", "edit")):
        dec = wf.add("VAEDecode", (1160, y), title=title, size=(260, 60))
        wf.connect(run, "output", dec, "samples")
        wf.connect(vae, "VAE", dec, "vae")
        save_section(wf, dec, "IMAGE", parts, 1740, y - 520 if prefix == "reconstruction" else y - 160,
                     f"vinv/native_{prefix}")
    for node, prefix, title in ((enc, "source", "Latent: source"), (rec, "reconstruction", "Latent: reconstruction"),
                                (edit, "edit", "Latent: edit")):
        save = wf.add("SaveLatent", (1450, 560 + 140 * ["source", "reconstruction", "edit"].index(prefix)),
                      {"filename_prefix": f"vinv/native_{prefix}"}, title=title, size=(260, 80))
        wf.connect(node, "LATENT" if node == enc else "output", save, "samples")
    wf.group("4. Or without inversion: FlowEdit (native)", 1140, 1100, 1000, 460, "#b58b2a")
    flowedit = wf.add("VInvNativeFlowEdit", (1160, 1160), {"n_max": NATIVE_FLOWEDIT_N_MAX}, size=(380, 360))
    for socket, (node, output) in {"model": (unet, "MODEL"), "source": (texts["source"], "CONDITIONING"),
                                   "target": (texts["edit"], "CONDITIONING"),
                                   "negative": (texts["negative"], "CONDITIONING"), "sigmas": (sigmas, "SIGMAS"),
                                   "latent": (enc, "LATENT")}.items():
        wf.connect(node, output, flowedit, socket)
    dec = wf.add("VAEDecode", (1560, 1160), title="Decode FlowEdit", size=(260, 60))
    wf.connect(flowedit, "latent", dec, "samples")
    wf.connect(vae, "VAE", dec, "vae")
    save_section(wf, dec, "IMAGE", parts, 1840, 1160, "vinv/native_flowedit")
    save = wf.add("SaveLatent", (1560, 1260), {"filename_prefix": "vinv/native_flowedit"}, title="Latent: flowedit",
                  size=(260, 80))
    wf.connect(flowedit, "latent", save, "samples")
    wf.note("FlowEdit (native) edits the source latent without inverting it: no trajectory, 2 guided model calls "
            "per step in its window (n_max of the SIGMAS' steps before the clean end; the paper's 33 of 50 is 20 of "
            "these 30), the source and edited prompts through core's CFG at their own cfg. The inversion above keeps "
            "more of the source's layout on the pack's tiny Wans (BENCHMARKS section 6).", (1560, 1360), (560, 140))
    return wf


BUILDS = {"encode_decode": encode_decode, "reconstruct": reconstruct, "edit": edit,
          "trajectory_save_load": trajectory_save_load, "i2v_edit": i2v_edit, "svd_edit": svd_edit,
          "wan_edit": wan_edit, "native_wan_edit": native_wan_edit}


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1) + "\n"


def main() -> None:
    pack = load_pack()
    API.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDS.items():
        wf = build(pack)
        (WORKFLOWS / f"{name}.json").write_text(dumps(wf.json()))
        (API / f"{name}.json").write_text(dumps(wf.api()))
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
