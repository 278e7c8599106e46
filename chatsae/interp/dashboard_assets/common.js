/* Shared helpers of the chatsae dashboard (no dependencies; works from file://). */
"use strict";
var C = window.CHATSAE || { meta: {}, features: [] };
var VOCAB = window.CHATSAE_VOCAB || {};

function el(tag, attrs, children) {
  var node = document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) {
    if (k === "text") node.textContent = attrs[k];
    else if (k === "cls") node.className = attrs[k];
    else node.setAttribute(k, attrs[k]);
  });
  (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
  return node;
}

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  var a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(digits === undefined ? 2 : digits);
  return x.toPrecision(digits === undefined ? 3 : digits);
}

function pct(x) {
  if (x === null || x === undefined) return "–";
  return x === 0 ? "0%" : (100 * x).toPrecision(3) + "%";
}

/* The one-line description of the run in the page header. */
function fillSummary() {
  var m = C.meta, node = document.getElementById("summary");
  if (!node) return;
  node.textContent = m.d_sae + " latents · " + m.n_fired + " fired · " + m.n_samples + " samples · " + m.n_tokens +
    " tokens · model " + (m.model || "?") + " · hook " + (m.hook_name || "?") +
    (m.fast_top_range !== null && m.fast_top_range !== undefined ? " · FAST top-range share " + pct(m.fast_top_range) : "");
}
document.addEventListener("DOMContentLoaded", fillSummary);

function tokenText(id) {
  var s = VOCAB[id];
  if (s === undefined) s = "<" + id + ">";
  return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
}

function isSpecial(s) { return /^<\|.*\|>$/.test(s) || /^<[a-z_]+>$/.test(s); }

function scoreBadge(score) {
  if (score === null || score === undefined) return el("span", { cls: "muted", text: "–" });
  return el("span", { cls: "score s" + score, text: String(score), title: "FAST 1-5 score" });
}

var tooltip = null;
function showTip(ev) {
  if (!tooltip) { tooltip = el("div", { id: "tooltip" }); document.body.appendChild(tooltip); }
  var t = ev.target;
  tooltip.textContent = JSON.stringify(t.getAttribute("data-tok")) + "  act " + t.getAttribute("data-act");
  tooltip.style.display = "block";
  tooltip.style.left = ev.clientX + 12 + "px";
  tooltip.style.top = ev.clientY + 14 + "px";
}
function hideTip() { if (tooltip) tooltip.style.display = "none"; }

/* One context: tokens coloured by activation relative to `scale`; hover shows the values. */
function renderContext(ctx, scale, label) {
  var line = el("div", { cls: "ctx" });
  line.appendChild(el("span", { cls: "meta", text: label }));
  ctx.t.forEach(function (id, i) {
    var act = ctx.a ? ctx.a[i] : 0;
    var text = tokenText(id);
    var span = el("span", { cls: "tok", text: text, "data-act": fmt(act, 4), "data-tok": VOCAB[id] || "",
                            title: "activation " + fmt(act, 4) });
    if (act > 0) {
      var alpha = Math.min(1, act / (scale || act)) * 0.85 + 0.08;
      span.style.background = "rgba(234, 88, 12, " + alpha.toFixed(3) + ")";
      span.className += " on";
    }
    if (i === ctx.c) span.className += " centre";
    if (isSpecial(VOCAB[id] || "")) span.className += " special";
    span.addEventListener("mousemove", showTip);
    span.addEventListener("mouseleave", hideTip);
    line.appendChild(span);
  });
  return line;
}

/* Inline SVG bar chart of a log-binned histogram: edges [n+1], counts [n]. */
function histogramSvg(edges, counts) {
  var ns = "http://www.w3.org/2000/svg";
  var W = 480, H = 150, pad = 28;
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  var total = counts.reduce(function (a, b) { return a + b; }, 0);
  if (!total) {
    var t = document.createElementNS(ns, "text");
    t.setAttribute("x", 10); t.setAttribute("y", 20); t.textContent = "never fired";
    svg.appendChild(t);
    return svg;
  }
  var first = counts.findIndex(function (c) { return c > 0; });
  var last = counts.length - 1 - counts.slice().reverse().findIndex(function (c) { return c > 0; });
  first = Math.max(0, first - 1); last = Math.min(counts.length - 1, last + 1);
  var n = last - first + 1, bw = (W - 2 * pad) / n, max = Math.max.apply(null, counts);
  for (var i = first; i <= last; i++) {
    var h = (H - 2 * pad) * counts[i] / max;
    var r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + (i - first) * bw + 1); r.setAttribute("y", H - pad - h);
    r.setAttribute("width", Math.max(bw - 2, 1)); r.setAttribute("height", h); r.setAttribute("fill", "#ea580c");
    var tt = document.createElementNS(ns, "title");
    tt.textContent = fmt(edges[i]) + "–" + fmt(edges[i + 1]) + ": " + counts[i];
    r.appendChild(tt);
    svg.appendChild(r);
    if (i === first || i === last || (i - first) % Math.ceil(n / 6) === 0) {
      var lab = document.createElementNS(ns, "text");
      lab.setAttribute("x", pad + (i - first) * bw); lab.setAttribute("y", H - pad + 14);
      lab.textContent = fmt(edges[i], 2);
      svg.appendChild(lab);
    }
  }
  var ax = document.createElementNS(ns, "text");
  ax.setAttribute("x", pad); ax.setAttribute("y", 14);
  ax.textContent = "tokens per activation bin (log-spaced), max " + max;
  svg.appendChild(ax);
  return svg;
}
