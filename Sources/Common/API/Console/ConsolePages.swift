import Foundation
import Mustache

/// The console's pages: Mustache templates (every `{{value}}` HTML-escaped; `{{{…}}}` only for
/// markup the console made itself: a page's body, a chart), rendered inside one layout. Plain
/// HTML and a small script (``ConsoleAssets``), no build step.
enum ConsolePages {
    static let library: MustacheLibrary = {
        var library = MustacheLibrary()
        for (name, text) in templates {
            do { try library.register(text, named: name) } catch { fatalError("console template \(name): \(error)") }
        }
        return library
    }()

    /// `data` rendered with the template `name`; "" when there is no such template.
    static func render(_ name: String, _ data: [String: Any]) -> String {
        library.render(data, withTemplate: name) ?? ""
    }

    /// A whole page: `body` rendered with its template inside the layout.
    static func page(_ name: String, title: String, session: (tenant: String, prefix: String, csrf: String, admin: Bool)?,
                     notice: String? = nil, _ data: [String: Any]) -> String {
        var layout: [String: Any] = ["title": title, "body": render(name, data), "nav_\(name)": true]
        if let notice, !notice.isEmpty { layout["notice"] = notice }
        if let session {
            layout["session"] = ["tenant": session.tenant, "prefix": session.prefix, "csrf": session.csrf, "admin": session.admin]
        }
        return render("layout", layout)
    }

    static let templates: [String: String] = [
        "layout": """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>{{title}} · Warren</title><link rel="stylesheet" href="/console/assets/console.css"><script src="/console/assets/console.js" defer></script></head>
            <body>
            <header><a class="brand" href="/console">Warren</a>
            {{#session}}<nav>
            <a href="/console" {{#nav_overview}}class="here"{{/nav_overview}}>Overview</a>
            <a href="/console/jobs" {{#nav_jobs}}class="here"{{/nav_jobs}}{{#nav_job}}class="here"{{/nav_job}}>Jobs</a>
            <a href="/console/batches" {{#nav_batches}}class="here"{{/nav_batches}}{{#nav_batch}}class="here"{{/nav_batch}}>Batches</a>
            <a href="/console/schedules" {{#nav_schedules}}class="here"{{/nav_schedules}}>Schedules</a>
            <a href="/console/dead" {{#nav_dead}}class="here"{{/nav_dead}}>Dead letters</a>
            </nav>
            <form class="signout" method="post" action="/console/logout"><span>{{tenant}}{{#admin}} (admin){{/admin}} · {{prefix}}…</span>
            <input type="hidden" name="csrf" value="{{csrf}}"><button type="submit">Sign out</button></form>{{/session}}
            </header>
            <main>{{#notice}}<p class="notice" role="status">{{notice}}</p>{{/notice}}
            {{{body}}}
            </main></body></html>
            """,
        "error": """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>{{title}} · Warren</title><link rel="stylesheet" href="/console/assets/console.css"></head>
            <body><header><a class="brand" href="/console">Warren</a></header><main><h1>{{status}}</h1><p class="error">{{message}}</p>
            <p><a href="/console">Back to the console</a></p></main></body></html>
            """,
        "login": """
            <h1>Sign in</h1>
            <form class="login" method="post" action="/console/login">
            <p>Paste an API token with the <code>console</code> scope (<code>producer tokens create --scopes console,...</code>).</p>
            {{#error}}<p class="error" role="alert">{{error}}</p>{{/error}}
            <label>Token <input type="password" name="token" autocomplete="off" required autofocus></label>
            <input type="hidden" name="next" value="{{next}}">
            <button type="submit" id="sign-in">Sign in</button>
            </form>
            """,
        "overview": """
            <h1>Overview</h1>
            <section id="live" data-refresh="/console/live" data-every="3000">{{{live}}}</section>
            <h2>The last hour</h2>
            <p class="hint">Rates and depths are the broker's own samples, one a minute; start latencies are what the consumers reported to this producer since it started.</p>
            <section id="charts" data-refresh="/console/charts" data-every="30000">{{{charts}}}</section>
            """,
        "live": """
            {{#broker_error}}<p class="error">The broker's management API did not answer ({{broker_error}}): queue figures are missing.</p>{{/broker_error}}
            <table class="tiers"><thead><tr><th>Tier</th><th>Ready</th><th>Unacked</th><th>Consumers</th><th>Published /s</th><th>Finished /s</th>
            <th>Start p50</th><th>Start p99</th><th>Target</th><th>Intake</th><th>Breakers open</th><th>Dead</th></tr></thead><tbody>
            {{#tiers}}<tr class="tier-{{name}}"><th><a href="/console/jobs?tier={{name}}">{{name}}</a></th><td>{{ready}}</td><td>{{unacked}}</td><td>{{consumers}}</td>
            <td>{{publish}}</td><td>{{ack}}</td><td>{{p50}}</td><td>{{p99}}</td><td>{{target}}</td>
            <td>{{#shedding}}<span class="bad">shedding ({{shedding}})</span>{{/shedding}}{{^shedding}}open{{/shedding}}</td>
            <td>{{#breakers}}<span class="bad">{{breakers}}</span>{{/breakers}}{{^breakers}}none{{/breakers}}</td>
            <td>{{#has_dead}}<a class="bad" href="/console/dead?tier={{name}}">{{dead}}</a>{{/has_dead}}{{^has_dead}}0{{/has_dead}}</td></tr>{{/tiers}}
            </tbody></table>
            <h2>Consumers</h2>
            {{^has_consumers}}<p class="hint">No consumer is subscribed to a tier queue.</p>{{/has_consumers}}
            {{#has_consumers}}<table><thead><tr><th>Connection</th><th>Tier</th><th>Lanes</th><th>Prefetch granted</th><th>Concurrency granted</th><th>In flight</th><th>Start p99 (last report)</th><th>Saturated</th><th>Breakers open</th></tr></thead><tbody>
            {{#consumers}}<tr><td>{{connection}}</td><td>{{tier}}</td><td>{{lanes}}</td><td>{{prefetch}}</td><td>{{concurrency}}</td><td>{{in_flight}}</td><td>{{p99}}</td><td>{{saturated}}</td>
            <td>{{#breakers}}<span class="bad">{{breakers}}</span>{{/breakers}}{{^breakers}}none{{/breakers}}</td></tr>{{/consumers}}
            </tbody></table>{{/has_consumers}}
            <p class="hint">Updated {{updated}} UTC.</p>
            """,
        "charts": """
            {{#broker_error}}<p class="error">The broker's samples are missing ({{broker_error}}).</p>{{/broker_error}}
            <div class="charts">{{#charts}}<figure>{{{svg}}}</figure>{{/charts}}</div>
            """,
        "jobs": """
            <h1>Jobs</h1>
            <form class="search" method="get" action="/console/jobs">
            <label>Id <input name="id" value="{{filter.id}}" size="36"></label>
            <label>Type <input name="type" value="{{filter.type}}"></label>
            {{#admin}}<label>Tenant <input name="tenant" value="{{filter.tenant}}"></label>{{/admin}}
            <label>Tier <select name="tier"><option value="">any</option>{{#tiers}}<option {{#selected}}selected{{/selected}}>{{name}}</option>{{/tiers}}</select></label>
            <label>Status <select name="status"><option value="">any</option>{{#statuses}}<option {{#selected}}selected{{/selected}}>{{name}}</option>{{/statuses}}</select></label>
            <label>Enqueued in the last <select name="hours">{{#windows}}<option value="{{hours}}" {{#selected}}selected{{/selected}}>{{label}}</option>{{/windows}}</select></label>
            <button type="submit">Search</button></form>
            {{#error}}<p class="error">{{error}}</p>{{/error}}
            <table class="jobs"><thead><tr><th>Job</th><th>Type</th><th>Tier</th><th>Tenant</th><th>Status</th><th>Attempts</th><th>Enqueued</th><th>Finished</th><th>Error</th></tr></thead><tbody>
            {{#jobs}}<tr><td><a href="/console/jobs/{{id}}">{{id}}</a></td><td>{{type}}</td><td>{{tier}}</td><td>{{tenant}}</td><td><span class="status {{status}}">{{status}}</span></td>
            <td>{{attempts}}</td><td>{{enqueued}}</td><td>{{finished}}</td><td class="clip">{{error}}</td></tr>{{/jobs}}
            {{^jobs}}<tr><td colspan="9" class="hint">No job matches.</td></tr>{{/jobs}}
            </tbody></table>
            """,
        "job": """
            <h1>Job <code>{{job.id}}</code></h1>
            <dl class="facts"><dt>Status</dt><dd><span class="status {{job.status}}" id="job-status">{{job.status}}</span></dd>
            <dt>Type</dt><dd>{{job.type}}</dd><dt>Tier</dt><dd>{{job.tier}}</dd><dt>Tenant</dt><dd>{{job.tenant}}</dd>
            <dt>Attempts</dt><dd>{{job.attempts}}</dd><dt>Enqueued</dt><dd>{{job.enqueued}}</dd><dt>Started</dt><dd>{{job.started}}</dd>
            <dt>Finished</dt><dd>{{job.finished}}</dd>{{#job.batch}}<dt>Batch</dt><dd><a href="/console/batches/{{job.batch}}">{{job.batch}}</a></dd>{{/job.batch}}
            {{#progress}}<dt>Progress</dt><dd><progress max="100" value="{{percent}}"></progress> {{done}}{{#total}} of {{total}}{{/total}} {{message}}</dd>{{/progress}}
            </dl>
            <div class="actions">
            {{#can_cancel}}<form method="post" action="/console/jobs/{{job.id}}/cancel" data-confirm="Cancel this job?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" id="cancel">Cancel</button></form>{{/can_cancel}}
            {{#can_retry}}<form method="post" action="/console/jobs/{{job.id}}/retry"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" id="retry">Retry now</button></form>{{/can_retry}}
            </div>
            {{#job.error}}<h2>Error</h2><pre class="error">{{job.error}}</pre>{{/job.error}}
            {{#job.result}}<h2>Result</h2><pre>{{job.result}}</pre>{{/job.result}}
            <h2>Payload</h2>{{#payload}}<pre>{{payload}}</pre>{{/payload}}{{^payload}}<p class="hint">Not kept: Warren keeps the payload of a job held for later, in the outbox, or that did not succeed at its first try; a consumer with WARREN_KEEP_PAYLOADS=all keeps every job's.</p>{{/payload}}
            <h2>Timeline</h2>
            <table class="timeline"><thead><tr><th>When (UTC)</th><th>Event</th><th>Attempt</th><th>Detail</th></tr></thead><tbody>
            {{#events}}<tr><td>{{at}}</td><td>{{event}}</td><td>{{attempt}}</td><td><code>{{detail}}</code></td></tr>{{/events}}
            {{^events}}<tr><td colspan="4" class="hint">No event logged yet.</td></tr>{{/events}}
            </tbody></table>
            """,
        "batches": """
            <h1>Batches</h1>
            <table><thead><tr><th>Batch</th><th>Tenant</th><th>Tier</th><th>Progress</th><th>Failed</th><th>Created</th><th>Completed</th></tr></thead><tbody>
            {{#batches}}<tr><td><a href="/console/batches/{{id}}">{{id}}</a></td><td>{{tenant}}</td><td>{{tier}}</td>
            <td><progress max="{{total}}" value="{{finished}}"></progress> {{finished}} / {{total}}</td><td>{{failed}}</td><td>{{created}}</td><td>{{completed}}</td></tr>{{/batches}}
            {{^batches}}<tr><td colspan="7" class="hint">No batch yet.</td></tr>{{/batches}}
            </tbody></table>
            """,
        "batch": """
            <h1>Batch <code>{{id}}</code></h1>
            <p><progress max="{{total}}" value="{{finished}}"></progress> {{finished}} of {{total}} finished{{#completed}}, completed {{completed}}{{/completed}}.</p>
            <table><thead><tr><th>Status</th><th>Jobs</th></tr></thead><tbody>{{#counts}}<tr><td><span class="status {{status}}">{{status}}</span></td><td>{{count}}</td></tr>{{/counts}}</tbody></table>
            {{#on_complete}}<p>On completion: <code>{{on_complete}}</code>{{#on_complete_job}} → <a href="/console/jobs/{{on_complete_job}}">{{on_complete_job}}</a>{{/on_complete_job}}</p>{{/on_complete}}
            <h2>Errors, grouped</h2>
            <table><thead><tr><th>Error</th><th>Jobs</th><th>Some of them</th></tr></thead><tbody>
            {{#errors}}<tr><td><code>{{message}}</code></td><td>{{count}}</td><td>{{#jobs}}<a href="/console/jobs/{{.}}">{{.}}</a> {{/jobs}}</td></tr>{{/errors}}
            {{^errors}}<tr><td colspan="3" class="hint">No job of this batch failed.</td></tr>{{/errors}}
            </tbody></table>
            """,
        "schedules": """
            <h1>Schedules</h1>
            <table><thead><tr><th>Name</th><th>Tenant</th><th>Cron</th><th>Time zone</th><th>Job type</th><th>Next fires (its zone)</th><th>State</th><th></th></tr></thead><tbody>
            {{#schedules}}<tr><td>{{name}}</td><td>{{tenant}}</td><td><code>{{cron}}</code></td><td>{{zone}}</td><td>{{type}}</td><td>{{#next}}{{.}}<br>{{/next}}</td>
            <td>{{#enabled}}enabled{{/enabled}}{{^enabled}}<span class="bad">disabled</span>{{#reason}}: {{reason}}{{/reason}}{{/enabled}}</td>
            <td><form method="post" action="/console/schedules/{{id}}/{{#enabled}}disable{{/enabled}}{{^enabled}}enable{{/enabled}}"><input type="hidden" name="csrf" value="{{csrf}}">
            <button type="submit">{{#enabled}}Disable{{/enabled}}{{^enabled}}Enable{{/enabled}}</button></form></td></tr>{{/schedules}}
            {{^schedules}}<tr><td colspan="8" class="hint">No schedule yet.</td></tr>{{/schedules}}
            </tbody></table>
            """,
        "dead": """
            <h1>Dead letters</h1>
            <h2>By reason</h2>
            <table class="reasons"><thead><tr><th>Reason</th><th>Open</th><th></th></tr></thead><tbody>
            {{#reasons}}<tr><td><a href="/console/dead?reason={{reason}}">{{reason}}</a></td><td>{{count}}</td>
            <td class="actions"><form method="post" action="/console/dead/replay" data-confirm="Replay every dead letter with this reason?"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="reason" value="{{reason}}"><button type="submit">Replay all</button></form>
            <form method="post" action="/console/dead/discard" data-confirm="Discard every dead letter with this reason?"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="reason" value="{{reason}}"><button type="submit">Discard all</button></form></td></tr>{{/reasons}}
            {{^reasons}}<tr><td colspan="3" class="hint">Nothing is dead.</td></tr>{{/reasons}}
            </tbody></table>
            <h2>{{#filter}}{{filter}}{{/filter}}{{^filter}}Every open dead letter{{/filter}}</h2>
            <form method="post" action="/console/dead/replay" id="dead-selection"><input type="hidden" name="csrf" value="{{csrf}}">
            <table class="dead"><thead><tr><th></th><th>Id</th><th>Job</th><th>Type</th><th>Tier</th><th>Tenant</th><th>Reason</th><th>Error</th><th>Dead since</th></tr></thead><tbody>
            {{#dead}}<tr><td>{{#replayable}}<input type="checkbox" name="ids" value="{{id}}" aria-label="select {{id}}">{{/replayable}}</td><td>{{id}}</td>
            <td>{{#job}}<a href="/console/jobs/{{job}}">{{job}}</a>{{/job}}</td><td>{{type}}</td><td>{{tier}}</td><td>{{tenant}}</td><td>{{reason}}</td><td class="clip">{{error}}</td><td>{{at}}</td></tr>{{/dead}}
            {{^dead}}<tr><td colspan="9" class="hint">None.</td></tr>{{/dead}}
            </tbody></table>
            <p><button type="submit" id="replay-selected">Replay selected</button>
            <button type="submit" formaction="/console/dead/discard" id="discard-selected">Discard selected</button></p>
            </form>
            """,
    ]
}

/// Small SVG line charts, drawn on the server: a few series over a time window.
enum Chart {
    struct Series {
        var label: String
        var color: String
        /// (Unix milliseconds, value), oldest first.
        var points: [(time: Int64, value: Double)]
    }

    static func svg(title: String, unit: String, series: [Series], from: Int64, to: Int64, width: Int = 440, height: Int = 150) -> String {
        let left = 48.0, right = 8.0, top = 22.0, bottom = 18.0
        let plotWidth = Double(width) - left - right, plotHeight = Double(height) - top - bottom
        let highest = series.flatMap { $0.points.map(\.value) }.max() ?? 0
        let ceiling = niceCeiling(highest)
        let span = Double(max(1, to - from))
        func x(_ time: Int64) -> Double { left + Double(time - from) / span * plotWidth }
        func y(_ value: Double) -> Double { top + plotHeight - value / ceiling * plotHeight }
        var svg = #"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \#(width) \#(height)" role="img" aria-label="\#(escape(title))">"#
        svg += #"<text x="\#(Int(left))" y="14" class="title">\#(escape(title))</text>"#
        var legendX = Double(width) - right
        for entry in series.reversed() {
            legendX -= Double(entry.label.count + 2) * 6.5 + 8
            svg += #"<text x="\#(Int(legendX))" y="14" fill="\#(entry.color)" class="legend">■ \#(escape(entry.label))</text>"#
        }
        for fraction in [0.0, 0.5, 1.0] {
            let value = ceiling * fraction
            svg += #"<line x1="\#(Int(left))" x2="\#(Int(left + plotWidth))" y1="\#(format(y(value)))" y2="\#(format(y(value)))" class="grid"/>"#
            svg += #"<text x="\#(Int(left) - 4)" y="\#(format(y(value) + 4))" text-anchor="end" class="axis">\#(label(value))\#(escape(unit))</text>"#
        }
        let minutes = (to - from) / 60_000
        svg += #"<text x="\#(Int(left))" y="\#(height - 3)" class="axis">−\#(minutes) min</text>"#
        svg += #"<text x="\#(Int(left + plotWidth))" y="\#(height - 3)" text-anchor="end" class="axis">now</text>"#
        for entry in series where !entry.points.isEmpty {
            let points = entry.points.filter { $0.time >= from && $0.time <= to }.map { "\(format(x($0.time))),\(format(y($0.value)))" }
            guard !points.isEmpty else { continue }
            if points.count == 1 {
                let xy = points[0].split(separator: ",")
                svg += #"<circle cx="\#(xy[0])" cy="\#(xy[1])" r="2.5" fill="\#(entry.color)"/>"#
            } else {
                svg += #"<polyline fill="none" stroke="\#(entry.color)" stroke-width="1.8" points="\#(points.joined(separator: " "))"/>"#
            }
        }
        if series.allSatisfy({ $0.points.isEmpty }) {
            svg += #"<text x="\#(Int(left + plotWidth / 2))" y="\#(Int(top + plotHeight / 2))" text-anchor="middle" class="axis">no data yet</text>"#
        }
        return svg + "</svg>"
    }

    /// 1, 2 or 5 times a power of ten, at least `value` (1 for nothing).
    static func niceCeiling(_ value: Double) -> Double {
        guard value > 0 else { return 1 }
        let power = pow(10, floor(log10(value)))
        for step in [1.0, 2.0, 5.0, 10.0] where step * power >= value { return step * power }
        return 10 * power
    }

    static func label(_ value: Double) -> String {
        if value >= 1_000_000 { return String(format: "%.1fM", value / 1_000_000) }
        if value >= 10_000 { return String(format: "%.0fk", value / 1_000) }
        if value == value.rounded() { return String(Int(value)) }
        return String(format: "%.1f", value)
    }

    static func format(_ value: Double) -> String { String(format: "%.1f", value) }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
