// The labelling page: the open round's pending samples as cards, most uncertain first; one key per class, s to
// skip, u to undo. Every answer is POSTed at once and stored by the server; the page keeps nothing that matters.
"use strict";

(() => {
  const { api, el, fmt } = AL;
  const $ = (id) => document.getElementById(id);

  const MAX_SHOWN = 12; // cards on the page at once (three rows of four): the rest follow as these are answered
  let view = null; // the last GET /api/label
  let order = []; // sample ids in the order shown (skipped ones moved to the back)
  const cardEls = new Map(); // "round:sample_id" -> its element, built once (a card never changes; no image reloads)
  let keysFor = null; // the classes the key legend was drawn for
  let seq = 0; // refreshes sent
  let applied = 0; // the newest refresh shown (an older reply arriving late is dropped)
  const history = []; // this tab's stored answers, for undo: {round, sample_id, label}
  const hidden = new Set(); // answered here, waiting for the server's reply
  let queue = Promise.resolve(); // answers and undos go one after the other
  let noticeTimer = null;
  let refreshTimer = null;

  // After an answer the page already shows what changed (the card hidden, the progress from the reply); the view
  // is fetched again once answers pause, so that a quick run of answers is not slowed by a refresh after each.
  function refreshSoon(ms = 250) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, ms);
  }

  function notice(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.className = `notice ${kind || "info"}`;
    box.hidden = false;
    clearTimeout(noticeTimer);
    if (kind !== "refused") noticeTimer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  function keyOf(k) {
    return view.classes.find((c) => c.key === k);
  }

  function cardsById() {
    const m = new Map();
    for (const c of view ? view.cards : []) m.set(c.sample_id, c);
    return m;
  }

  function reconcile() {
    const byId = cardsById();
    order = order.filter((id) => byId.has(id));
    for (const c of view.cards) if (!order.includes(c.sample_id)) order.push(c.sample_id);
    for (const id of Array.from(hidden)) if (!byId.has(id)) hidden.delete(id);
  }

  function visible() {
    return order.filter((id) => !hidden.has(id));
  }

  function renderKeys() {
    const sig = JSON.stringify(view.classes);
    if (sig === keysFor) return;
    keysFor = sig;
    const box = $("keys");
    box.replaceChildren(
      el("span", { class: "muted" }, "keys: "),
      ...view.classes.map((c) => el("span", { class: "keycap" }, c.key ? el("kbd", { text: c.key }) : "", c.key === c.name ? "" : ` ${c.name}`)),
      el("span", { class: "keycap" }, el("kbd", { text: "s" }), " skip"),
      el("span", { class: "keycap" }, el("kbd", { text: "u" }), " undo"),
    );
  }

  function card(c, current) {
    const media = c.image
      ? el("img", { src: c.image, alt: `sample ${c.sample_id}`, class: "sample", width: 224, height: 224 })
      : el("table", { class: "row" }, ...Object.entries(c.row || {}).map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: fmt(v, 4) }))));
    const guesses = c.guesses.length
      ? el("p", { class: "guesses" }, "model: ", ...c.guesses.map((g, i) =>
          el("span", { class: "guess" + (i === 0 ? " best" : "") }, `${g.name} ${(100 * g.p).toFixed(0)}%`)))
      : el("p", { class: "guesses muted" }, "no model guess yet (the first round is chosen at random)");
    const buttons = el("div", { class: "buttons" },
      ...view.classes.map((k) => el("button", {
        type: "button", class: "answer", "data-label": k.index, title: `label ${k.name}${k.key ? ` (key ${k.key})` : ""}`,
        onclick: () => answer(c.sample_id, k.index),
      }, k.key ? el("kbd", { text: k.key }) : "", k.key === k.name ? "" : ` ${k.name}`)),
      el("button", { type: "button", class: "skip", onclick: () => skip(c.sample_id) }, el("kbd", { text: "s" }), " skip"));
    return el("article", { class: "card" + (current ? " current" : ""), "data-sample-id": c.sample_id },
      el("header", {},
        el("span", { class: "rank", title: "rank in the strategy's order (1 = most informative)" }, `#${c.rank + 1}`),
        el("span", { class: "score", title: "the strategy's score (higher = more uncertain)" }, c.score === null ? "" : `score ${fmt(c.score)}`),
        el("span", { class: "sid" }, c.key ? `${c.key} (id ${c.sample_id})` : `id ${c.sample_id}`)),
      media, guesses, buttons);
  }

  function renderProgress() {
    const p = view.progress;
    $("progress-text").textContent = `${p.answered} of ${p.total} answered`;
    $("progress-fill").style.width = p.total ? `${(100 * p.answered) / p.total}%` : "0";
  }

  // Put exactly these nodes in box, in this order, moving only those out of place: an answered card leaves and the
  // next one joins without the others being detached and laid out again.
  function place(box, nodes) {
    nodes.forEach((node, i) => {
      const at = box.children[i];
      if (at !== node) box.insertBefore(node, at || null);
    });
    while (box.children.length > nodes.length) box.lastElementChild.remove();
  }

  function render() {
    if (!view) return;
    $("title").textContent = `Labelling ${view.run}` + (view.round !== null ? `, round ${view.round}` : "");
    const status = $("status");
    status.textContent = view.message;
    status.className = `status ${view.state}`;
    document.body.dataset.state = view.state;
    document.body.dataset.round = view.round === null ? "" : String(view.round);
    renderProgress();
    renderKeys();
    const byId = cardsById();
    const ids = view.state === "labelling" ? visible() : [];
    const shown = ids.slice(0, MAX_SHOWN).map((id, i) => {
      const k = `${view.round}:${id}`;
      let node = cardEls.get(k);
      if (!node) {
        node = card(byId.get(id), false);
        cardEls.set(k, node);
      }
      node.classList.toggle("current", i === 0);
      return node;
    });
    const keep = new Set(ids.map((id) => `${view.round}:${id}`));
    for (const k of Array.from(cardEls.keys())) if (!keep.has(k)) cardEls.delete(k);
    if (ids.length > MAX_SHOWN) shown.push(el("p", { class: "muted more", text: `and ${ids.length - MAX_SHOWN} more, shown as these are answered` }));
    place($("cards"), shown);
    $("undo").disabled = history.length === 0;
  }

  async function refresh() {
    const mine = ++seq;
    let v;
    try {
      v = await api("/api/label");
    } catch (e) {
      $("status").textContent = e.message;
      $("status").className = "status stopped";
      return 5000;
    }
    if (mine < applied) return view && view.state === "labelling" ? 1500 : 300; // a newer view is shown already
    applied = mine;
    view = v;
    reconcile();
    render();
    if (view.state === "finished") return 0; // nothing more will happen
    return view.state === "labelling" ? 1500 : 300;
  }

  function answer(sampleId, label) {
    if (!view || view.state !== "labelling") return;
    const round = view.round;
    hidden.add(sampleId);
    render();
    queue = queue.then(async () => {
      try {
        const res = await api("/api/label/answers", { round, sample_id: sampleId, label });
        if (res.status === "stored") history.push({ round, sample_id: sampleId, label });
        else if (res.status === "repeated") notice(res.reason, "info");
        else { hidden.delete(sampleId); notice(`refused: ${res.reason}`, "refused"); refresh(); }
        if (view && view.round === round && res.status !== "refused") {
          view.progress = res.progress; // stored: say so now; the cards follow with the refresh
          renderProgress();
          $("undo").disabled = history.length === 0;
        }
      } catch (e) {
        hidden.delete(sampleId);
        notice(`not stored: ${e.message}`, "refused");
        refresh();
      }
      refreshSoon();
    });
  }

  function skip(sampleId) {
    order = order.filter((id) => id !== sampleId).concat([sampleId]);
    render();
  }

  function undo() {
    const last = history.pop();
    if (!last) { notice("nothing to undo on this page", "info"); return; }
    queue = queue.then(async () => {
      try {
        const res = await api("/api/label/undo", { round: last.round, sample_id: last.sample_id });
        if (res.status === "withdrawn") {
          order = [last.sample_id].concat(order.filter((id) => id !== last.sample_id));
          hidden.delete(last.sample_id);
          notice(`answer for sample ${last.sample_id} withdrawn; answer it again`, "info");
        } else notice(`refused: ${res.reason}`, "refused");
      } catch (e) {
        history.push(last);
        notice(`undo failed: ${e.message}`, "refused");
      }
      await refresh();
    });
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    if (!view) return;
    const k = ev.key.toLowerCase();
    if (k === "u") { ev.preventDefault(); undo(); return; }
    const current = view.state === "labelling" ? visible()[0] : undefined;
    if (current === undefined) return;
    if (k === "s") { ev.preventDefault(); skip(current); return; }
    const cls = keyOf(k);
    if (cls) { ev.preventDefault(); answer(current, cls.index); }
  });
  $("undo").addEventListener("click", undo);

  AL.poll(refresh, 1500);
})();
