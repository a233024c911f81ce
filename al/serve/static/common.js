// Shared by every page: the API client (the token in a header), small DOM helpers, and inline SVG charts.
// Plain JavaScript, no build step, no external files: the server serves everything it needs.
"use strict";

const AL = (() => {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const token = meta("al-token");

  // The token came in the address (?token=...): the server has set its cookie, so drop it from the address bar.
  if (new URLSearchParams(location.search).has("token")) {
    const url = new URL(location.href);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  async function api(path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers["X-AL-Token"] = token;
    const opts = { headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      opts.method = "POST";
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : res.statusText;
      const err = new Error(`${res.status}: ${detail}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // el("div", {class: "x", text: "..."}, child, ...): text always goes in as text, never as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(digits));

  // --- charts: inline SVG ----------------------------------------------------------------------------------------
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function niceTicks(lo, hi, count = 5, integer = false) {
    if (!(hi > lo)) return [lo];
    const step0 = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toFixed(10)));
    return out;
  }

  // layers: [{type: "band", points: [{x, lo, hi}], color}, {type: "line", points: [{x, y}], color, dashed,
  //          dots, label}] ; returns an <svg>. Every dot is a <circle class="pt"> with a <title>.
  function chart(layers, opts = {}) {
    const W = opts.width || 640, H = opts.height || 340;
    const m = { l: 56, r: 16, t: 12, b: 44 };
    const xs = [], ys = [];
    for (const L of layers) {
      for (const p of L.points) {
        xs.push(p.x);
        if (L.type === "band") ys.push(p.lo, p.hi);
        else if (p.y !== null && p.y !== undefined) ys.push(p.y);
      }
    }
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title || "chart" });
    if (!xs.length || !ys.length) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }));
      root.lastChild.textContent = opts.empty || "no data yet";
      return root;
    }
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (opts.yMin !== undefined) y0 = Math.min(y0, opts.yMin);
    if (opts.yMax !== undefined) y1 = Math.max(y1, opts.yMax);
    if (x1 === x0) { x0 -= 1; x1 += 1; } // one point: centred
    if (y1 === y0) { y0 -= 0.05 * (Math.abs(y0) || 1); y1 += 0.05 * (Math.abs(y1) || 1); }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    if (opts.clamp01) { y0 = Math.max(0, y0); y1 = Math.min(1, y1); }
    const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
    const axes = svg("g", { class: "axes" });
    for (const t of niceTicks(y0, y1)) {
      axes.append(svg("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
      const lab = svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" });
      lab.textContent = String(t);
      axes.append(lab);
    }
    for (const t of niceTicks(x0, x1, 6, opts.integerX !== false)) {
      axes.append(svg("line", { x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, class: "tick" }));
      const lab = svg("text", { x: X(t), y: H - m.b + 17, "text-anchor": "middle" });
      lab.textContent = String(t);
      axes.append(lab);
    }
    axes.append(svg("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, class: "frame" }));
    const xl = svg("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" });
    xl.textContent = opts.xLabel || "";
    const yl = svg("text", { x: 14, y: (m.t + H - m.b) / 2, "text-anchor": "middle", class: "axis-label", transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` });
    yl.textContent = opts.yLabel || "";
    axes.append(xl, yl);
    root.append(axes);
    for (const L of layers) {
      const pts = L.points.filter((p) => (L.type === "band" ? p.lo !== null && p.hi !== null : p.y !== null && p.y !== undefined));
      if (!pts.length) continue;
      if (L.type === "band") {
        const up = pts.map((p) => `${X(p.x)},${Y(p.hi)}`);
        const down = pts.slice().reverse().map((p) => `${X(p.x)},${Y(p.lo)}`);
        root.append(svg("polygon", { points: up.concat(down).join(" "), fill: L.color, class: "band" }));
        continue;
      }
      root.append(svg("polyline", {
        points: pts.map((p) => `${X(p.x)},${Y(p.y)}`).join(" "),
        stroke: L.color,
        class: "line" + (L.dashed ? " dashed" : "") + (L.thin ? " thin" : ""),
      }));
      if (L.dots !== false) {
        for (const p of pts) {
          const c = svg("circle", { cx: X(p.x), cy: Y(p.y), r: L.dashed ? 2.6 : 3.2, fill: L.color, class: "pt", "data-series": L.label || "" });
          const t = svg("title");
          t.textContent = `${L.label ? L.label + ": " : ""}${opts.xLabel || "x"} ${p.x}, ${opts.yLabel || "y"} ${fmt(p.y, 4)}${p.note ? " " + p.note : ""}`;
          c.append(t);
          root.append(c);
        }
      }
    }
    return root;
  }

  function legend(items) {
    return el("ul", { class: "legend" }, ...items.map((it) =>
      el("li", {}, el("span", { class: "swatch" + (it.dashed ? " dashed" : ""), style: `border-color:${it.color};background:${it.dashed ? "transparent" : it.color}` }), it.label)));
  }

  // Poll fn every ms milliseconds (fn may return another delay), never two at once.
  function poll(fn, ms) {
    let timer = null;
    const tick = async () => {
      let next = ms;
      try {
        const r = await fn();
        if (typeof r === "number") next = r;
      } catch (e) {
        console.error(e);
      }
      if (next > 0) timer = setTimeout(tick, next);
    };
    tick();
    return () => clearTimeout(timer);
  }

  return { api, el, fmt, chart, legend, poll, PALETTE, token, runHint: meta("al-run") };
})();
