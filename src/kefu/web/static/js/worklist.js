// Keyboard shortcuts of the work-order lists: j / k move between rows, Enter opens the current one,
// "/" jumps to the search filter, "c" starts a new work order. Keys typed into a field are left alone.
(function () {
  "use strict";
  var table = document.getElementById("wo-list");
  if (!table) return;
  var rows = Array.prototype.slice.call(table.querySelectorAll("tr.wo-row"));
  var current = -1;

  function select(index) {
    if (!rows.length) return;
    index = Math.max(0, Math.min(rows.length - 1, index));
    if (current >= 0 && rows[current]) rows[current].classList.remove("wo-current");
    current = index;
    rows[current].classList.add("wo-current");
    rows[current].setAttribute("aria-selected", "true");
    rows[current].focus({ preventScroll: true });
    rows[current].scrollIntoView({ block: "nearest" });
  }

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  rows.forEach(function (row, index) {
    row.addEventListener("click", function (ev) {
      if (ev.target.closest("a, button, input, select, textarea")) return;
      select(index);
    });
    row.addEventListener("dblclick", function () { location.href = row.dataset.href; });
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    if (ev.key === "j") { select(current + 1); ev.preventDefault(); }
    else if (ev.key === "k") { select(current < 0 ? 0 : current - 1); ev.preventDefault(); }
    else if (ev.key === "Enter" && current >= 0) { location.href = rows[current].dataset.href; ev.preventDefault(); }
    else if (ev.key === "/") {
      var filter = document.getElementById("wo-filter-q");
      if (filter) { filter.focus(); filter.select(); ev.preventDefault(); }
    } else if (ev.key === "c" && table.dataset.newUrl) { location.href = table.dataset.newUrl; ev.preventDefault(); }
  });
})();
