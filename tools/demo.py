"""The main job: run the example edit workflow in a real ComfyUI on the bundled model.

    python3 tools/demo.py [--out demo-output] [--workflow workflows/api/edit.json]

Needs only Python 3 and pip: builds (or reuses) the ComfyUI host in .host/ (or uses the tree
VIDINV_COMFYUI names, see tools/comfy_host.py), starts it on
127.0.0.1, queues workflows/api/edit.json (the API form of workflows/edit.json, what the editor's
Queue button sends for it), waits, and leaves in --out:
  source.mp4, reconstruction.mp4, edit.mp4, side_by_side.mp4, side_by_side.gif, metrics.txt
The GIF shows source | reconstruction | edit | edit mask (white: what the edit may change).
The last line printed is the metrics line: round-trip error, edit attribute hit, edit mask, seconds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import comfy_host  # noqa: E402  (stdlib only)


def by_title(prompt: dict, entry: dict, title: str) -> dict:
    nid = next(k for k, v in prompt.items() if v["_meta"]["title"] == title)
    return entry["outputs"][nid]


def seconds_of(entry: dict) -> float:
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def run_workflow(args) -> None:
    host = comfy_host.configured(Path(args.host_dir)).build()
    base = host.base(Path(args.host_dir) / "demo-base")
    out_dir = Path(args.out).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    comfy_output = base / "output" / "vinv"
    if comfy_output.exists():
        shutil.rmtree(comfy_output)
    with comfy_host.Server(host, base) as server:
        prompt = json.loads(Path(args.workflow).read_text())
        print(f"[demo] queued {Path(args.workflow).name} on {server.url}", flush=True)
        entry = server.run(prompt, timeout=1800)
        if entry["status"]["status_str"] != "success":
            err = comfy_host.execution_error(entry) or {}
            sys.exit(f"[demo] the workflow failed in {err.get('node_type')}: {err.get('exception_message')}")
    seconds = seconds_of(entry)

    def file_of(title: str, kind: str = "images") -> list[Path]:
        items = by_title(prompt, entry, title)[kind]
        return [base / "output" / it["subfolder"] / it["filename"] for it in items]

    for title, name in [("Save reconstruction", "reconstruction.mp4"), ("Save edit", "edit.mp4"),
                        ("Save side by side", "side_by_side.mp4"), ("Save source", "source.mp4")]:
        shutil.copyfile(file_of(title)[0], out_dir / name)
    frames = {k: [str(p) for p in file_of(f"Frames: {k}")] for k in ("source", "reconstruction", "edit", "edit mask")}
    latents = {k: str(file_of(f"Latent: {k}", "latents")[0]) for k in ("source", "reconstruction")}
    edit_prompt = prompt[next(k for k, v in prompt.items() if v["_meta"]["title"] == "Edited prompt")]
    source_prompt = prompt[next(k for k, v in prompt.items() if v["_meta"]["title"] == "Source prompt")]
    job = {"frames": frames, "latents": latents, "seconds": seconds, "out": str(out_dir),
           "edit_prompt": edit_prompt["inputs"]["prompt"], "source_prompt": source_prompt["inputs"]["prompt"]}
    (out_dir / "job.json").write_text(json.dumps(job, indent=1))
    # metrics need numpy/torch: the host's environment has them
    subprocess.run([str(host.python), str(Path(__file__).resolve()), "--metrics", str(out_dir / "job.json")],
                   check=True)


def metrics(job_path: str) -> None:
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from vidinv import synthetic

    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    load = {k: np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in v])
            for k, v in job["frames"].items()}
    lat = {k: load_file(p)["latent_tensor"].double() for k, p in job["latents"].items()}
    rt = float((lat["reconstruction"] - lat["source"]).norm() / lat["source"].norm())
    src, rec, edit = load["source"], load["reconstruction"], load["edit"]
    got = synthetic.describe(edit)
    words = job["edit_prompt"].lower().split()
    target = {"colour": next((w for w in words if w in synthetic.COLOURS), None),
              "shape": next((w for w in words if w in synthetic.SHAPES), None),
              "direction": next((w for w in words if w in synthetic.DIRECTIONS), None)}
    hits = [f"{k} {target[k]} {'hit' if got[k] == target[k] else 'MISSED (got ' + str(got[k]) + ')'}"
            for k in ("colour", "shape", "direction") if target[k]]
    mask = load["edit mask"]
    masked = f"edit mask {100 * float(mask.mean()):.0f} % of the pixels" if mask.min() < 0.5 else "no edit mask"
    line = (f"round-trip error {rt:.2e} (latent, relative), reconstruction PSNR {synthetic.psnr(rec, src):.1f} dB "
            f"vs the source frames (the VAE's limit) | edit '{job['edit_prompt']}': {', '.join(hits)}; mask IoU "
            f"{synthetic.mask_iou(edit, src):.2f}, centroid path error {synthetic.centroid_error(edit, src):.2f} px; "
            f"{masked} | {job['seconds']:.1f} s")
    gif = np.concatenate([src, rec, edit, mask], axis=2)
    frames = [Image.fromarray((f * 255).astype(np.uint8)).resize((f.shape[1] * 3, f.shape[0] * 3), Image.NEAREST)
              for f in gif]
    frames[0].save(out / "side_by_side.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    (out / "metrics.txt").write_text(line + "\n")
    print(f"[demo] outputs in {out}: " + ", ".join(sorted(p.name for p in out.iterdir() if p.name != "job.json")))
    print(line)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "demo-output"))
    p.add_argument("--workflow", default=str(ROOT / "workflows" / "api" / "edit.json"),
                   help="an API-form prompt with the node titles of workflows/edit.json")
    p.add_argument("--host-dir", default=str(comfy_host.DEFAULT_HOST_DIR))
    p.add_argument("--metrics", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.metrics:
        metrics(args.metrics)
    else:
        start = time.time()
        run_workflow(args)
        print(f"[demo] done in {time.time() - start:.0f}s (host build included)")


if __name__ == "__main__":
    main()
