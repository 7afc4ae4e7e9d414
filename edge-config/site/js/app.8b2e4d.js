// Cathedral demo site: shows facts about the current response and probes the
// API route. No dependencies, no external requests.
(function () {
  "use strict";

  function show(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // Re-request this page (from cache if possible) to read its response headers.
  function readHeaders() {
    fetch(location.pathname, { method: "HEAD", cache: "default" })
      .then(function (res) {
        document.querySelectorAll("[data-header]").forEach(function (el) {
          var value = res.headers.get(el.getAttribute("data-header"));
          if (value) el.textContent = value;
        });
      })
      .catch(function () {
        /* Facts stay at their defaults. */
      });
  }

  function showTiming() {
    var nav = performance.getEntriesByType && performance.getEntriesByType("navigation")[0];
    if (nav && nav.responseEnd > 0) {
      show("timing", Math.round(nav.responseEnd - nav.startTime) + " ms");
    } else {
      show("timing", "not measured");
    }
  }

  function probe() {
    var started = performance.now();
    show("probe-result", "Requesting /api/ \u2026");
    fetch("/api/", { cache: "no-store" })
      .then(function (res) {
        var ms = Math.round(performance.now() - started);
        var note = res.status === 502 || res.status === 504
          ? " \u2014 is an origin listening on 127.0.0.1:9000?"
          : "";
        show("probe-result", res.status + " " + res.statusText + " in " + ms + " ms" + note);
      })
      .catch(function (err) {
        show("probe-result", "Request failed: " + err.message);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    readHeaders();
    window.addEventListener("load", showTiming);
    var button = document.getElementById("probe");
    if (button) button.addEventListener("click", probe);
  });
})();
