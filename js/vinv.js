// Exact Video Inversion: what the nodes show after they run.
// - DDIM Invert / Load Trajectory: per-step fixed-point residual (log scale) and a summary.
// - Guided Sample: the injection window over the steps.
// - Encode Text / VAE Encode: their notes (truncated prompt, frames and size used).
// All data comes from the node's own UI output (the "executed" message), never a second request.
import { app } from "../../scripts/app.js";

const PLOT_W = 300;
const PLOT_H = 110;

function panel(node, name) {
  if (!node.__vinvPanels) node.__vinvPanels = {};
  if (node.__vinvPanels[name]) return node.__vinvPanels[name];
  const el = document.createElement("div");
  el.className = `vinv-panel vinv-${name}`;
  el.style.cssText = "font: 11px monospace; color: #ddd; padding: 2px 4px; overflow: hidden;";
  const widget = node.addDOMWidget(`vinv_${name}`, "vinv_panel", el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => (name === "text" ? 40 : PLOT_H + 44),
  });
  node.__vinvPanels[name] = { el, widget };
  node.setSize([Math.max(node.size[0], PLOT_W + 20), node.computeSize()[1]]);
  return node.__vinvPanels[name];
}

function fmt(x) {
  return Number.isFinite(x) ? x.toExponential(1) : "n/a";
}

function drawResiduals(canvas, residuals) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 22;
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, w, h);
  const finite = residuals.filter((r) => Number.isFinite(r) && r > 0);
  if (!finite.length) {
    ctx.fillStyle = "#aaa";
    ctx.fillText("no refinement (naive inverse): no residuals", 8, h / 2);
    return;
  }
  const lo = Math.floor(Math.log10(Math.min(...finite)));
  const hi = Math.ceil(Math.log10(Math.max(...finite))) || lo + 1;
  const y = (r) => h - pad / 2 - ((Math.log10(r) - lo) / Math.max(hi - lo, 1)) * (h - pad);
  const x = (i) => pad + (i / Math.max(residuals.length - 1, 1)) * (w - pad - 6);
  ctx.strokeStyle = "#444";
  ctx.fillStyle = "#999";
  ctx.font = "9px monospace";
  for (let e = lo; e <= hi; e++) {
    ctx.beginPath();
    ctx.moveTo(pad, y(10 ** e));
    ctx.lineTo(w, y(10 ** e));
    ctx.stroke();
    ctx.fillText(`1e${e}`, 0, y(10 ** e) + 3);
  }
  ctx.strokeStyle = "#6cf";
  ctx.beginPath();
  residuals.forEach((r, i) => {
    if (!Number.isFinite(r) || r <= 0) return;
    if (i === 0) ctx.moveTo(x(i), y(r));
    else ctx.lineTo(x(i), y(r));
  });
  ctx.stroke();
  ctx.fillStyle = "#aaa";
  ctx.fillText("clean → noise (inversion steps)", pad, h - 1);
}

function showTrajectory(node, summary) {
  const { el } = panel(node, "trajectory");
  el.innerHTML = "";
  el.dataset.steps = summary.steps;
  el.dataset.sizeMb = summary.size_mb;
  el.dataset.dtype = summary.dtype;
  el.dataset.shape = summary.latent_shape.join("x");
  const text = document.createElement("div");
  text.className = "vinv-summary";
  const calls = summary.calls.reduce((a, b) => a + b, 0) / Math.max(summary.calls.length, 1);
  const finite = summary.residuals.filter(Number.isFinite);
  text.textContent =
    `${summary.steps} steps · latent ${summary.latent_shape.join("×")} · ${summary.dtype} · ` +
    `${summary.size_mb} MB · ${calls.toFixed(1)} calls/step · max residual ${fmt(Math.max(...finite))}`;
  const canvas = document.createElement("canvas");
  canvas.className = "vinv-residual-plot";
  canvas.width = PLOT_W;
  canvas.height = PLOT_H;
  canvas.dataset.residuals = JSON.stringify(summary.residuals);
  el.append(text, canvas);
  if (summary.warning) {
    const warn = document.createElement("div");
    warn.className = "vinv-warning";
    warn.style.color = "#f96";
    warn.textContent = summary.warning;
    el.append(warn);
  }
  drawResiduals(canvas, summary.residuals);
}

function showWindow(node, info) {
  const { el } = panel(node, "window");
  el.innerHTML = "";
  el.dataset.active = JSON.stringify(info.active);
  const text = document.createElement("div");
  text.className = "vinv-summary";
  text.textContent = `reference injected in ${info.active.length}/${info.steps} steps · blocks ${info.blocks} · weight ${info.weight}`;
  const canvas = document.createElement("canvas");
  canvas.className = "vinv-window-plot";
  canvas.width = PLOT_W;
  canvas.height = 28;
  const ctx = canvas.getContext("2d");
  const cell = PLOT_W / Math.max(info.steps, 1);
  const active = new Set(info.active);
  for (let i = 0; i < info.steps; i++) {
    ctx.fillStyle = active.has(i) ? "#6c6" : "#333";
    ctx.fillRect(i * cell, 4, Math.max(cell - 1, 1), 16);
  }
  ctx.fillStyle = "#aaa";
  ctx.font = "9px monospace";
  ctx.fillText("noise → clean (sampling steps)", 2, 27);
  el.append(text, canvas);
}

function showText(node, lines) {
  const { el } = panel(node, "text");
  el.className = "vinv-panel vinv-text vinv-note";
  el.textContent = lines.join("\n");
  el.style.whiteSpace = "pre-wrap";
  if (lines.some((l) => l.startsWith("Prompt longer"))) el.style.color = "#f96";
}

app.registerExtension({
  name: "vidinv.exact-video-inversion",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("VInv")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.vinv_trajectory?.length) showTrajectory(this, message.vinv_trajectory[0]);
      if (message?.vinv_guidance?.length) showWindow(this, message.vinv_guidance[0]);
      if (message?.text?.length) showText(this, message.text);
      this.setDirtyCanvas(true, true);
    };
  },
});
