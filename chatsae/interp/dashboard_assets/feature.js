/* One latent's page: feature.html#ID loads data/chunks/cNNNNN.js (a script tag, so it works from file://). */
"use strict";
(function () {
  var chunks = {};
  var chunkSize = C.meta.chunk_size;
  window.chatsaeChunk = function (n, data) { chunks[n] = data; };

  function current() { var id = parseInt(location.hash.slice(1), 10); return Number.isNaN(id) ? 0 : id; }

  function load(id, done) {
    var n = Math.floor(id / chunkSize);
    if (chunks[n]) return done(chunks[n][id]);
    var s = document.createElement("script");
    s.src = "data/chunks/c" + String(n).padStart(5, "0") + ".js";
    s.onload = function () { done(chunks[n] ? chunks[n][id] : undefined); };
    s.onerror = function () { done(undefined); };
    document.head.appendChild(s);
  }

  function stat(value, label) { return el("div", { cls: "stat" }, [el("b", { text: value }), el("span", { text: label })]); }

  function table(header, rows) {
    var t = el("table", {}, [el("tr", {}, header.map(function (h) { return el("th", { text: h }); }))]);
    rows.forEach(function (r) { t.appendChild(el("tr", {}, r.map(function (c) {
      return typeof c === "object" ? el("td", {}, [c]) : el("td", { text: String(c) });
    }))); });
    return t;
  }

  function contexts(title, list, scale, open) {
    var box = el("details", open ? { open: "" } : {}, [el("summary", { text: title + " (" + list.length + ")" })]);
    list.forEach(function (ctx) {
      box.appendChild(renderContext(ctx, scale, ctx.m > 0 ? "max " + fmt(ctx.m) + " · sample " + ctx.s
                                                           : "sample " + ctx.s));
    });
    if (!list.length) box.appendChild(el("div", { cls: "muted", text: "none" }));
    return box;
  }

  function render(f) {
    var id = current(), main = document.getElementById("main");
    main.textContent = "";
    document.title = "Latent " + id + " · " + (C.meta.title || "chatsae");
    var nav = el("div", { cls: "nav card" }, [
      el("a", { href: "index.html", text: "\u2190 all latents" }),
      el("a", { href: "#" + Math.max(0, id - 1), text: "\u2039 previous" }),
      el("a", { href: "#" + Math.min(C.meta.d_sae - 1, id + 1), text: "next \u203a" })]);
    main.appendChild(nav);
    if (!f) { main.appendChild(el("div", { cls: "card", id: "missing", text: "No data for latent " + id + "." })); return; }
    var ai = f.autointerp || {};
    var head = el("div", { cls: "card", id: "feature-head" }, [
      el("h2", {}, ["Latent " + id + " ", scoreBadge(ai.score), " ", el("span", { text: ai.name || "" })])]);
    if (ai.explanation) head.appendChild(el("div", { cls: "muted", text: "Explanation: " + ai.explanation }));
    var stats = el("div", { cls: "stats" }, [
      stat(pct(f.freq), "firing frequency (tokens)"), stat(pct(f.sample_freq), "samples with a firing"),
      stat(fmt(f.max), "max activation"), stat(fmt(f.mean), "mean activation when firing"),
      stat(f.freq ? pct(f.special) : "–", "firings on chat-template tokens")]);
    if (ai.detection !== undefined && ai.detection !== null) stats.appendChild(stat(fmt(ai.detection), "detection balanced acc."));
    if (ai.fuzzing !== undefined && ai.fuzzing !== null) stats.appendChild(stat(fmt(ai.fuzzing), "fuzzing balanced acc."));
    head.appendChild(stats);
    main.appendChild(head);

    var ctxCard = el("div", { cls: "card", id: "contexts" }, [el("h2", { text: "Contexts (hover a token for its activation)" })]);
    ctxCard.appendChild(contexts("Top activating samples", f.top, f.max, true));
    ctxCard.appendChild(contexts("Activation quantiles (random activating samples)", f.quantile, f.max, true));
    ctxCard.appendChild(contexts("Random non-activating samples", f.random, f.max, false));
    main.appendChild(ctxCard);

    var grid = el("div", { cls: "grid" });
    grid.appendChild(el("div", { cls: "card" }, [el("h2", { text: "Activation histogram" }), histogramSvg(f.hist.edges, f.hist.counts)]));
    var lrows = [];
    for (var i = 0; i < Math.max(f.logits.top.length, f.logits.bottom.length); i++) {
      var p = f.logits.top[i], n = f.logits.bottom[i];
      lrows.push([p ? tokenText(p[0]) : "", el("span", { cls: "pos", text: p ? fmt(p[1]) : "" }),
                  n ? tokenText(n[0]) : "", el("span", { cls: "neg", text: n ? fmt(n[1]) : "" })]);
    }
    var lt = table(["promoted", "logit", "suppressed", "logit"], lrows);
    lt.className = "logits";
    grid.appendChild(el("div", { cls: "card" }, [el("h2", { text: "Logit lens of the decoder direction" }), lt]));
    var trows = f.template.map(function (t) { return [tokenText(t[0]), t[1], pct(t[2]), fmt(t[3])]; });
    var crows = Object.keys(f.classes).map(function (k) { return [k, f.classes[k][0], fmt(f.classes[k][1])]; });
    grid.appendChild(el("div", { cls: "card", id: "special" }, [
      el("h2", { text: "Special-token statistics" }),
      table(["template token", "occurrences", "fires on", "mean act"], trows),
      el("h2", { text: "By token class", style: "margin-top:10px" }),
      table(["class", "firings", "mean act (all tokens)"], crows)]));
    main.appendChild(grid);

  }

  function route() { load(current(), render); }
  window.addEventListener("hashchange", route);
  route();
})();
