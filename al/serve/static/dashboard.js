// The dashboard: runs in progress, learning curves (mean ± std over seeds per strategy, per protocol), and one run's
// per-round uncertainty and stopping-criterion values. Polls the API every 2 s; nothing is reloaded.
"use strict";

(() => {
  const { api, el, fmt, chart, legend, PALETTE } = AL;
  const $ = (id) => document.getElementById(id);
  let chosen = AL.runHint || null; // the run whose rounds are shown
  let runs = [];

  function runRow(r) {
    const open = r.open_round ? `round ${r.open_round.round}: ${r.open_round.state} (${r.open_round.answered} of ${r.open_round.total} answered)` : "";
    return el("tr", { class: `status-${r.status}`, "data-run": r.run },
      el("td", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); choose(r.run); }, text: r.run })),
      el("td", { text: r.dataset }), el("td", { text: r.strategy }), el("td", { text: r.seed }),
      el("td", {}, el("span", { class: `badge ${r.status}`, text: r.status })),
      el("td", { text: `${r.labels === null ? "-" : r.labels} / ${r.budget === null ? "-" : r.budget}` }),
      el("td", { text: fmt(r.accuracy, 4) }),
      el("td", {}, open, r.hint ? el("div", { class: "hint", text: r.hint }) : (r.message && r.status !== "finished" ? el("div", { class: "muted", text: r.message }) : "")));
  }

  function runsTable(list) {
    if (!list.length) return el("p", { class: "muted", text: "none" });
    return el("table", { class: "runs" },
      el("thead", {}, el("tr", {}, ...["run", "dataset", "strategy", "seed", "status", "labels / budget", "accuracy", "round"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...list.map(runRow)));
  }

  function renderRuns() {
    const live = runs.filter((r) => r.status !== "finished");
    $("live-runs").replaceChildren(runsTable(live));
    $("all-runs-title").textContent = `All runs (${runs.length})`;
    $("all-runs").replaceChildren(runsTable(runs));
    const sel = $("run-select");
    const names = runs.map((r) => r.run);
    if (!chosen || !names.includes(chosen)) chosen = (live[0] || runs[0] || {}).run || null;
    const have = Array.from(sel.options).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    }
    if (chosen) sel.value = chosen;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function renderCurves(data) {
    const box = $("curves");
    if (!data.protocols.length) {
      box.replaceChildren(el("p", { class: "muted", text: "no completed round with a test accuracy yet" }));
      return;
    }
    box.replaceChildren(...data.protocols.map((p) => {
      const layers = [], items = [];
      p.series.forEach((s, i) => {
        const color = PALETTE[i % PALETTE.length];
        if (s.band.length) {
          layers.push({ type: "band", color, points: s.band.map((b) => ({ x: b.n, lo: b.mean - b.std, hi: b.mean + b.std })) });
          layers.push({ type: "line", color, label: s.strategy, points: s.band.map((b) => ({ x: b.n, y: b.mean, note: `(n=${b.count})` })) });
          items.push({ color, label: `${s.strategy} (n=${s.n_seeds})` });
        }
        s.in_progress.forEach((r, j) => {
          layers.push({ type: "line", color, dashed: true, label: r.run, points: r.points.map((q) => ({ x: q.n, y: q.accuracy })) });
          if (j === 0) items.push({ color, dashed: true, label: `${s.strategy}: in progress (${s.in_progress.length})` });
        });
      });
      return el("figure", { class: "chart-box wide", "data-protocol": p.protocol },
        el("figcaption", {}, el("strong", { text: p.dataset }), ` · ${p.protocol}`, el("div", { class: "muted small", text: p.description })),
        chart(layers, { xLabel: "labelled samples", yLabel: "test accuracy", clamp01: true, title: `learning curves ${p.protocol}` }),
        legend(items));
    }));
  }

  function renderRounds(data) {
    const done = data.rounds.filter((r) => r.state === "complete").length;
    $("run-summary").textContent = `${data.dataset}, ${data.strategy}: ${data.status}, ${data.labels} of ${data.budget} labels, ${done} complete rounds`;
    const scored = data.rounds.filter((r) => r.pool);
    const unc = [
      { type: "band", color: "#999", points: scored.map((r) => ({ x: r.round, lo: r.pool.q25, hi: r.pool.q75 })) },
      { type: "line", color: "#777", thin: true, label: "candidates (median)", points: scored.map((r) => ({ x: r.round, y: r.pool.median })) },
      { type: "line", color: PALETTE[0], label: "acquired batch (mean)", points: scored.filter((r) => r.batch).map((r) => ({ x: r.round, y: r.batch.mean })) },
    ];
    $("uncertainty").replaceChildren(
      chart(unc, { xLabel: "round", yLabel: "acquisition score", empty: "no per-sample uncertainty (e.g. random, or the first round)", height: 260 }),
      legend([{ color: PALETTE[0], label: "acquired batch (mean)" }, { color: "#777", label: "candidates: median, IQR shaded" }]));
    const stopLayers = [], items = [];
    data.criteria.forEach((c, i) => {
      const color = PALETTE[(i + 1) % PALETTE.length];
      stopLayers.push({ type: "line", color, label: c.name, points: data.rounds.filter((r) => c.name in r.values).map((r) => ({ x: r.round, y: r.values[c.name] })) });
      stopLayers.push({ type: "line", color, dashed: true, dots: false, points: data.rounds.filter((r) => c.threshold_name in r.values).map((r) => ({ x: r.round, y: r.values[c.threshold_name] })) });
      items.push({ color, label: c.name });
    });
    $("stopping").replaceChildren(
      chart(stopLayers, { xLabel: "round", yLabel: "value", empty: "no stopping criterion recorded (--stop budget)", height: 260 }),
      legend(items));
    const names = data.criteria.map((c) => c.name);
    $("rounds").replaceChildren(el("table", { class: "rounds" },
      el("thead", {}, el("tr", {}, ...["round", "state", "labels", "accuracy", "NLL", "batch score (mean)", "candidates (median)", ...names].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...data.rounds.slice().reverse().map((r) => el("tr", {},
        el("td", { text: r.round }), el("td", { text: r.state }), el("td", { text: r.n_labelled === null ? "-" : r.n_labelled }),
        el("td", { text: fmt(r.accuracy, 4) }), el("td", { text: fmt(r.nll, 3) }),
        el("td", { text: r.batch ? fmt(r.batch.mean, 4) : "-" }), el("td", { text: r.pool ? fmt(r.pool.median, 4) : "-" }),
        ...names.map((n) => el("td", { text: fmt(r.values[n], 4) })))))));
  }

  async function refresh() {
    const [r, c] = await Promise.all([api("/api/runs"), api("/api/curves")]);
    runs = r.runs;
    renderRuns();
    renderCurves(c);
    if (chosen) renderRounds(await api(`/api/runs/${encodeURIComponent(chosen)}/rounds`));
    document.body.dataset.refreshed = String(Date.now());
    return 2000;
  }

  function choose(name) {
    chosen = name;
    $("run-select").value = name;
    api(`/api/runs/${encodeURIComponent(name)}/rounds`).then(renderRounds).catch(console.error);
  }

  $("run-select").addEventListener("change", (ev) => choose(ev.target.value));
  AL.poll(refresh, 2000);
})();
