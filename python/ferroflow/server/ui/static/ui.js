// ferroflow UI: live updates of a run page (polls a small JSON every second while the
// run is not finished) and nothing else. No framework, no build step.
"use strict";
(function () {
  var root = document.querySelector("[data-live]");
  if (!root) return;
  var url = root.getAttribute("data-live");
  var classes = ["ok", "fail", "run", "pause", "retry", "cancel", "wait", "skip"];
  function setState(el, s) {
    classes.forEach(function (c) { el.classList.remove("st-" + c); });
    el.classList.add("st-" + s.cls);
  }
  function apply(d) {
    document.querySelectorAll("[data-run-state]").forEach(function (el) {
      setState(el, d);
      el.textContent = d.glyph + " " + d.state;
    });
    document.querySelectorAll("[data-run-took]").forEach(function (el) { el.textContent = d.took; });
    document.querySelectorAll("[data-run-ended]").forEach(function (el) {
      el.textContent = d.ended_at || "-";
    });
    Object.keys(d.tasks).forEach(function (tid) {
      var t = d.tasks[tid];
      document.querySelectorAll('[data-task="' + tid + '"]').forEach(function (el) {
        setState(el, t);
        var label = el.querySelector("[data-task-label]");
        if (label) label.textContent = t.counts;
        var total = el.querySelector("[data-task-total]");
        if (total) total.textContent = t.total;
      });
    });
    var actions = document.getElementById("run-actions");
    if (actions) actions.setAttribute("data-finished", d.finished ? "1" : "0");
    var live = document.getElementById("live-status");
    if (live) live.textContent = d.finished ? "finished" : "live";
    return d.finished;
  }
  function tick() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (d && apply(d)) return;
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 1000);
})();
