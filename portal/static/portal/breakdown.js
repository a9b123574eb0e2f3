// Loads the dashboard's property breakdown after the page (it reads events, the rest of the
// page reads rollups). Without this script the panel's link and form open the breakdown as a
// page of its own, so the dashboard works the same without JavaScript.
(function () {
  "use strict";

  function load(panel, url) {
    panel.setAttribute("aria-busy", "true");
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var loaded = new DOMParser()
          .parseFromString(html, "text/html")
          .getElementById("breakdown-panel");
        if (!loaded) throw new Error("no breakdown in the response");
        loaded.setAttribute("aria-live", "polite");
        panel.replaceWith(loaded);
        bind(loaded);
      })
      .catch(function () {
        panel.removeAttribute("aria-busy"); // the link and the form still work
      });
  }

  function bind(panel) {
    var form = panel.querySelector("form[data-breakdown-form]");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var params = new URLSearchParams(new FormData(form));
      var page = new URL(window.location.href);
      page.searchParams.set("property", params.get("property") || "");
      window.history.replaceState(null, "", page);
      params.set("fragment", "1");
      load(panel, form.action + "?" + params.toString());
    });
  }

  var panel = document.getElementById("breakdown-panel");
  if (panel && panel.dataset.fragment) {
    load(panel, panel.dataset.fragment);
  }
})();
