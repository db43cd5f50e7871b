/* imclust report: the interactive 2-D map (canvas + spatial grid for hover, thumbnails from a sprite sheet).
   Everything it needs is in the page's JSON block #imclust-data; it loads nothing from the network. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("imclust-data").textContent);
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];

  function colour(i, m) {
    if (m <= PALETTE.length) return PALETTE[i];
    return "hsl(" + ((i * 137.508) % 360).toFixed(1) + ",62%," + (42 + (i % 3) * 9) + "%)";
  }

  /* groups: the distinct values of one colouring, their colours, names and counts */
  function makeGroups(values, names, prefix) {
    var uniq = Array.from(new Set(values)).sort(function (a, b) { return a - b; });
    var pos = new Map();
    uniq.forEach(function (v, g) { pos.set(v, g); });
    var of = new Int32Array(values.length);
    var counts = new Array(uniq.length).fill(0);
    for (var i = 0; i < values.length; i++) { var g = pos.get(values[i]); of[i] = g; counts[g]++; }
    var members = uniq.map(function () { return []; });
    for (var j = 0; j < values.length; j++) members[of[j]].push(j);
    return {
      values: uniq, of: of, counts: counts, members: members,
      colours: uniq.map(function (_, g) { return colour(g, uniq.length); }),
      names: uniq.map(function (v) { return names && v >= 0 && v < names.length ? String(names[v]) : prefix + " " + v; })
    };
  }

  window.imclust = window.imclust || {};
  var clusterGroups = makeGroups(D.cluster, null, "cluster");
  window.imclust.clusterColours = {};
  clusterGroups.values.forEach(function (v, g) { window.imclust.clusterColours[v] = clusterGroups.colours[g]; });
  document.querySelectorAll("[data-cluster-swatch]").forEach(function (el) {
    el.style.background = window.imclust.clusterColours[el.getAttribute("data-cluster-swatch")] || "#999";
  });
  document.querySelectorAll(".sizes [data-cluster]").forEach(function (el) {
    el.style.background = window.imclust.clusterColours[el.getAttribute("data-cluster")] || "#999";
  });

  var canvas = document.getElementById("map-canvas");
  if (!canvas || !D.x) return;
  var n = D.x.length;
  var groups = { cluster: clusterGroups };
  if (D.label) groups.label = makeGroups(D.label, D.classNames, "class");
  var mode = "cluster", isolate = null, hover = -1;
  var ctx = canvas.getContext("2d");
  var tip = document.getElementById("map-tip");
  var tipCanvas = tip.querySelector("canvas"), tipCtx = tipCanvas.getContext("2d");
  var W = 0, H = 0, dpr = 1;
  var view = { scale: 1, tx: 0, ty: 0 };
  var R_HIT = 8;
  var radius = n > 20000 ? 1.3 : n > 5000 ? 1.8 : n > 1000 ? 2.6 : 3.6;

  /* data bounds and a uniform grid over them (built once; queries convert the hover radius to data units) */
  var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (var i = 0; i < n; i++) {
    if (D.x[i] < minX) minX = D.x[i]; if (D.x[i] > maxX) maxX = D.x[i];
    if (D.y[i] < minY) minY = D.y[i]; if (D.y[i] > maxY) maxY = D.y[i];
  }
  if (!(maxX > minX)) { minX -= 1; maxX += 1; }
  if (!(maxY > minY)) { minY -= 1; maxY += 1; }
  var G = Math.max(1, Math.min(256, Math.round(Math.sqrt(n / 2))));
  var cw = (maxX - minX) / G, ch = (maxY - minY) / G;
  function cellX(x) { return Math.min(G - 1, Math.max(0, Math.floor((x - minX) / cw))); }
  function cellY(y) { return Math.min(G - 1, Math.max(0, Math.floor((y - minY) / ch))); }
  var cellStart = new Int32Array(G * G + 1), cellItems = new Int32Array(n), pointCell = new Int32Array(n);
  for (var p = 0; p < n; p++) { var c = cellY(D.y[p]) * G + cellX(D.x[p]); pointCell[p] = c; cellStart[c + 1]++; }
  for (var q = 0; q < G * G; q++) cellStart[q + 1] += cellStart[q];
  var fillPos = cellStart.slice(0, G * G);
  for (var r = 0; r < n; r++) cellItems[fillPos[pointCell[r]]++] = r;

  function sx(i) { return D.x[i] * view.scale + view.tx; }
  function sy(i) { return -D.y[i] * view.scale + view.ty; }

  function fit() {
    var pad = 18, s = Math.min((W - 2 * pad) / (maxX - minX), (H - 2 * pad) / (maxY - minY));
    view.scale = s;
    view.tx = W / 2 - s * (minX + maxX) / 2;
    view.ty = H / 2 + s * (minY + maxY) / 2;
  }

  function resize() {
    dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    var first = W === 0;
    if (!first) { view.tx += (w - W) / 2; view.ty += (h - H) / 2; }
    W = w; H = h;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    if (first) fit();
    draw();
  }

  var lastDrawMs = 0;
  function draw() {
    var t0 = performance.now();
    var grp = groups[mode];
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    var TAU = Math.PI * 2;
    for (var pass = 0; pass < 2; pass++) {
      for (var g = 0; g < grp.members.length; g++) {
        var dim = isolate !== null && g !== isolate;
        if ((pass === 0) !== dim) continue;
        var m = grp.members[g];
        ctx.globalAlpha = dim ? 0.1 : 0.85;
        ctx.fillStyle = dim ? "#8a93a3" : grp.colours[g];
        ctx.beginPath();
        for (var k = 0; k < m.length; k++) {
          var X = sx(m[k]), Y = sy(m[k]);
          if (X < -5 || Y < -5 || X > W + 5 || Y > H + 5) continue;
          ctx.moveTo(X + radius, Y);
          ctx.arc(X, Y, radius, 0, TAU);
        }
        ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    if (hover >= 0) {
      ctx.beginPath();
      ctx.arc(sx(hover), sy(hover), radius + 4, 0, TAU);
      ctx.lineWidth = 2; ctx.strokeStyle = "#1d2330"; ctx.stroke();
    }
    lastDrawMs = performance.now() - t0;
  }

  /* the visible point nearest to (mx, my) in canvas pixels, within R_HIT; -1 when none */
  function hitTest(mx, my) {
    var dx = (mx - view.tx) / view.scale, dy = -(my - view.ty) / view.scale, rad = R_HIT / view.scale;
    var x0 = cellX(dx - rad), x1 = cellX(dx + rad), y0 = cellY(dy - rad), y1 = cellY(dy + rad);
    var best = -1, bestD = R_HIT * R_HIT, grp = groups[mode];
    for (var cy = y0; cy <= y1; cy++) {
      for (var cx = x0; cx <= x1; cx++) {
        var c = cy * G + cx;
        for (var k = cellStart[c]; k < cellStart[c + 1]; k++) {
          var i = cellItems[k];
          if (isolate !== null && grp.of[i] !== isolate) continue;
          var ex = sx(i) - mx, ey = sy(i) - my, d = ex * ex + ey * ey;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  /* thumbnails: one sprite sheet image, tiles addressed by slot */
  var sprite = null, T = D.thumbs;
  if (T) { sprite = new Image(); sprite.src = T.uri; }
  function slotOf(i) {
    if (!T) return -1;
    if (!T.points) return i < T.count ? i : -1;
    var lo = 0, hi = T.points.length - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (T.points[mid] === i) return T.slots ? T.slots[mid] : mid;
      if (T.points[mid] < i) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }
  function drawThumb(i) {
    var s = slotOf(i), size = tipCanvas.width;
    tipCtx.clearRect(0, 0, size, size);
    tip.setAttribute("data-thumb", s >= 0 && sprite && sprite.complete ? "1" : "0");
    if (s < 0 || !sprite || !sprite.complete) {
      tipCtx.fillStyle = "#5b6475"; tipCtx.font = "12px sans-serif"; tipCtx.textAlign = "center";
      tipCtx.fillText(T ? "no thumbnail" : "no thumbnails", size / 2, size / 2 - 4);
      tipCtx.fillText(T ? "(sampled out)" : "in this run", size / 2, size / 2 + 12);
      return;
    }
    var col = s % T.cols, row = Math.floor(s / T.cols);
    var k = Math.min(size / T.tw, size / T.th), w = T.tw * k, h = T.th * k;
    tipCtx.imageSmoothingEnabled = Math.max(T.tw, T.th) > 16;
    tipCtx.drawImage(sprite, col * T.tw, row * T.th, T.tw, T.th, (size - w) / 2, (size - h) / 2, w, h);
  }

  function nameOf(grp, i) { return grp.names[grp.of[i]]; }
  function showTip(i, mx, my) {
    tip.style.display = "block";
    tip.setAttribute("data-index", String(i));
    drawThumb(i);
    tip.querySelector(".tid").textContent = D.ids[i];
    var meta = "cluster " + D.cluster[i];
    if (groups.label) meta += " \u00b7 " + nameOf(groups.label, i);
    tip.querySelector(".tmeta").textContent = meta;
    var bw = tip.offsetWidth, bh = tip.offsetHeight;
    var left = mx + 16, top = my + 16;
    if (left + bw > W) left = mx - bw - 16;
    if (top + bh > H) top = Math.max(0, my - bh - 16);
    tip.style.left = Math.max(0, left) + "px"; tip.style.top = top + "px";
  }
  function hideTip() { tip.style.display = "none"; tip.removeAttribute("data-index"); }

  var pending = null, drag = null;
  function onHover() {
    var ev = pending; pending = null;
    if (!ev) return;
    var rect = canvas.getBoundingClientRect(), mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    var i = hitTest(mx, my);
    if (i !== hover) { hover = i; draw(); }
    if (i >= 0) showTip(i, mx, my); else hideTip();
  }
  canvas.addEventListener("mousemove", function (ev) {
    if (drag) {
      view.tx = drag.tx + ev.clientX - drag.x; view.ty = drag.ty + ev.clientY - drag.y;
      hideTip(); hover = -1; draw(); return;
    }
    if (!pending) requestAnimationFrame(onHover);
    pending = ev;
  });
  canvas.addEventListener("mouseleave", function () { pending = null; hover = -1; hideTip(); draw(); });
  canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty }; });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var rect = canvas.getBoundingClientRect(), mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    var f = Math.exp(-ev.deltaY * 0.0015);
    view.tx = mx - (mx - view.tx) * f; view.ty = my - (my - view.ty) * f; view.scale *= f;
    hideTip(); hover = -1; draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", function () { fit(); draw(); });
  document.getElementById("map-reset").addEventListener("click", function () { isolate = null; fit(); renderLegend(); draw(); });

  var legend = document.getElementById("map-legend");
  function renderLegend() {
    var grp = groups[mode];
    legend.textContent = "";
    grp.values.forEach(function (v, g) {
      var it = document.createElement("div");
      it.className = "item" + (isolate !== null && isolate !== g ? " dim" : "");
      it.setAttribute("data-group", String(v));
      var sw = document.createElement("span"); sw.className = "sw"; sw.style.background = grp.colours[g];
      var nm = document.createElement("span"); nm.textContent = grp.names[g];
      var ct = document.createElement("span"); ct.className = "cnt"; ct.textContent = grp.counts[g].toLocaleString("en");
      it.appendChild(sw); it.appendChild(nm); it.appendChild(ct);
      it.title = "click to highlight " + grp.names[g] + "; click again to show all";
      it.addEventListener("click", function () { isolate = isolate === g ? null : g; renderLegend(); draw(); });
      legend.appendChild(it);
    });
  }
  function setMode(m) {
    mode = m; isolate = null; hover = -1; hideTip();
    document.querySelectorAll("#map-mode button").forEach(function (b) { b.classList.toggle("on", b.getAttribute("data-mode") === m); });
    renderLegend(); draw();
  }
  document.querySelectorAll("#map-mode button").forEach(function (b) {
    b.addEventListener("click", function () { setMode(b.getAttribute("data-mode")); });
  });
  document.querySelectorAll("[data-show-cluster]").forEach(function (b) {
    b.addEventListener("click", function () {
      setMode("cluster");
      isolate = clusterGroups.values.indexOf(Number(b.getAttribute("data-show-cluster")));
      renderLegend(); draw();
      document.getElementById("map").scrollIntoView();
    });
  });

  if (window.ResizeObserver) new ResizeObserver(function () { resize(); }).observe(canvas);
  else window.addEventListener("resize", resize);
  renderLegend();
  resize();
  if (sprite) sprite.onload = function () { if (tip.hasAttribute("data-index")) drawThumb(Number(tip.getAttribute("data-index"))); };

  /* a small handle for tests and curious users (browser console) */
  window.imclust.map = {
    n: n,
    screenPos: function (i) { var rect = canvas.getBoundingClientRect(); return [rect.left + sx(i), rect.top + sy(i)]; },
    hitTest: hitTest,
    redraw: function () { draw(); return lastDrawMs; },
    setMode: setMode,
    spriteReady: function () { return !T || (sprite.complete && sprite.naturalWidth > 0); }
  };
})();

/* "How k was chosen": the rerun command follows the k typed in; Copy puts it on the clipboard. */
(function () {
  "use strict";
  var input = document.getElementById("k-rerun-k"), code = document.getElementById("k-rerun");
  if (!input || !code) return;
  var template = code.getAttribute("data-template");
  function update() {
    var k = parseInt(input.value, 10);
    if (isFinite(k) && k >= 1) code.textContent = template.split("{k}").join(String(k));
  }
  input.addEventListener("input", update);
  var copy = document.getElementById("k-rerun-copy");
  if (copy) copy.addEventListener("click", function () {
    if (navigator.clipboard) navigator.clipboard.writeText(code.textContent).then(function () {
      copy.textContent = "Copied";
      setTimeout(function () { copy.textContent = "Copy"; }, 1500);
    }, function () {});
  });
})();
