/* The feature list: search, sort, page. */
"use strict";
(function () {
  var rows = C.features.slice();
  var state = { key: "id", asc: true, query: "", shown: 200 };
  var columns = [
    ["id", "latent", true], ["name", "auto-interp name", false], ["score", "score", true],
    ["freq", "frequency", true], ["max", "max act", true], ["mean", "mean act", true],
    ["special", "on template tokens", true], ["tokens", "top tokens", false], ["promoted", "promotes", false]
  ];
  var head = document.getElementById("head");
  columns.forEach(function (col) {
    var th = el("th", { text: col[1], "data-key": col[0], cls: col[2] ? "sortable" : "" });
    if (col[2]) th.addEventListener("click", function () {
      state.asc = state.key === col[0] ? !state.asc : col[0] === "id";
      state.key = col[0];
      render();
    });
    head.appendChild(th);
  });
  var search = document.getElementById("search");
  search.addEventListener("input", function () { state.query = search.value.trim().toLowerCase(); state.shown = 200; render(); });
  document.getElementById("more").addEventListener("click", function () { state.shown += 500; render(); });

  function matches(f) {
    if (!state.query) return true;
    if (/^\d+$/.test(state.query)) return String(f.id).indexOf(state.query) === 0;
    return ((f.name || "") + " " + f.tokens + " " + f.promoted).toLowerCase().indexOf(state.query) >= 0;
  }

  function render() {
    var key = state.key, sign = state.asc ? 1 : -1;
    var list = rows.filter(matches).sort(function (a, b) {
      var x = a[key], y = b[key];
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : x > y ? 1 : a.id - b.id) * sign;
    });
    Array.prototype.forEach.call(head.children, function (th) {
      th.classList.toggle("sorted", th.getAttribute("data-key") === key);
      th.classList.toggle("asc", th.getAttribute("data-key") === key && state.asc);
    });
    var body = document.getElementById("rows");
    body.textContent = "";
    list.slice(0, state.shown).forEach(function (f) {
      var tr = el("tr", { cls: "row", "data-id": f.id });
      tr.appendChild(el("td", { cls: "num" }, [el("a", { href: "feature.html#" + f.id, text: String(f.id) })]));
      tr.appendChild(el("td", { text: f.name || "" }));
      tr.appendChild(el("td", {}, [scoreBadge(f.score)]));
      tr.appendChild(el("td", { cls: "num", text: pct(f.freq) }));
      tr.appendChild(el("td", { cls: "num", text: fmt(f.max) }));
      tr.appendChild(el("td", { cls: "num", text: fmt(f.mean) }));
      tr.appendChild(el("td", { cls: "num", text: f.freq ? pct(f.special) : "–" }));
      tr.appendChild(el("td", { text: f.tokens }));
      tr.appendChild(el("td", { text: f.promoted }));
      body.appendChild(tr);
    });
    document.getElementById("count").textContent = list.length + " of " + rows.length + " latents";
    document.getElementById("more").style.display = list.length > state.shown ? "" : "none";
  }
  render();
})();
