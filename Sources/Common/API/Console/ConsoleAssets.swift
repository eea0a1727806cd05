/// The console's stylesheet and script, served from memory (`/console/assets/...`): no build
/// step, no third-party code. The script refreshes the parts of a page marked
/// `data-refresh="<url>" data-every="<ms>"` and asks before forms marked `data-confirm`.
enum ConsoleAssets {
    static let css = """
        :root { --ink: #1d2430; --muted: #5f6b7a; --line: #d9dee5; --bg: #f6f7f9; --accent: #2458c6; --bad: #b3261e; --good: #1e7d3a; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
        header { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #14213d; color: #fff; }
        header a { color: #dbe4ff; text-decoration: none; }
        header .brand { font-weight: 700; font-size: 18px; color: #fff; }
        nav { display: flex; gap: 16px; flex: 1; }
        nav a.here { color: #fff; border-bottom: 2px solid #8fb0ff; }
        .signout { display: flex; gap: 10px; align-items: center; color: #b9c4dd; }
        main { padding: 16px 24px 40px; max-width: 1400px; }
        h1 { font-size: 22px; margin: 6px 0 14px; } h2 { font-size: 16px; margin: 22px 0 8px; }
        table { border-collapse: collapse; background: #fff; width: 100%; border: 1px solid var(--line); }
        th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
        thead th { background: #eef1f5; font-weight: 600; font-size: 13px; color: var(--muted); }
        table.tiers td, table.tiers th { font-variant-numeric: tabular-nums; font-size: 15px; }
        a { color: var(--accent); }
        code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
        pre { background: #fff; border: 1px solid var(--line); padding: 10px; overflow: auto; max-height: 320px; white-space: pre-wrap; }
        .hint { color: var(--muted); } .bad, .error { color: var(--bad); }
        .notice { background: #e7f0ff; border: 1px solid #b8cdf5; padding: 8px 12px; }
        .status { padding: 1px 7px; border-radius: 9px; background: #e9ecf1; font-size: 12px; }
        .status.succeeded { background: #dff3e4; color: var(--good); } .status.failed, .status.dead { background: #fbe3e1; color: var(--bad); }
        .status.running { background: #e3ecff; color: var(--accent); } .status.retrying { background: #fff1d6; color: #8a5a00; }
        .clip { max-width: 360px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
        form.search, form.login { display: flex; flex-wrap: wrap; gap: 10px 16px; align-items: end; margin-bottom: 14px; }
        form.login { flex-direction: column; align-items: start; max-width: 480px; }
        form.login input { width: 420px; }
        label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
        input, select, button { font: inherit; padding: 4px 8px; }
        button { background: var(--accent); color: #fff; border: 0; border-radius: 4px; padding: 5px 12px; cursor: pointer; }
        .signout button { background: transparent; border: 1px solid #6d7fa8; }
        .actions { display: flex; gap: 8px; } .actions form { display: inline; }
        dl.facts { display: grid; grid-template-columns: 120px 1fr; gap: 4px 12px; background: #fff; border: 1px solid var(--line); padding: 12px; }
        dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
        .charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
        .charts figure { margin: 0; background: #fff; border: 1px solid var(--line); padding: 6px; }
        svg .title { font-size: 12px; font-weight: 600; fill: var(--ink); } svg .legend { font-size: 11px; }
        svg .axis { font-size: 10px; fill: var(--muted); } svg .grid { stroke: #e6e9ee; stroke-width: 1; }
        """

    static let js = """
        "use strict";
        document.addEventListener("DOMContentLoaded", () => {
          for (const part of document.querySelectorAll("[data-refresh]")) {
            const every = Number(part.dataset.every || 5000);
            const refresh = async () => {
              try {
                const answer = await fetch(part.dataset.refresh, { credentials: "same-origin", headers: { "X-Warren-Fragment": "1" } });
                if (answer.status === 401) { location.reload(); return; }
                if (answer.ok) { part.innerHTML = await answer.text(); part.dataset.refreshed = String(Date.now()); }
              } catch (error) { /* the next round tries again */ }
            };
            setInterval(refresh, every);
          }
          for (const form of document.querySelectorAll("form[data-confirm]")) {
            form.addEventListener("submit", (event) => { if (!confirm(form.dataset.confirm)) event.preventDefault(); });
          }
        });
        """
}
