import Foundation
import Testing

/// The web console as an operator meets it, in a real browser (headless Chromium through
/// chromedriver): signed in with a token, every page opened, a dead job replayed after its fix
/// and seen to succeed. Real broker, Postgres, `producer serve`, consumer and scheduler; the
/// job's runs are counted by its program (as in ``DeadLetterTests``).
@Suite(.enabled(if: TestServices.enabled && Browser.available))
struct ConsoleBrowserTests {
    @Test func anOperatorSignsInSeesEveryPageAndReplaysADeadJobThatThenSucceeds() async throws {
        let dead = DeadLetterTests()
        let program = try dead.program()
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "fix.me"]) { server, _, _ in
            let jobs = try await server.token(tier: "free", scopes: "jobs:write")
            let operatorToken = try await server.token(tier: "enterprise", scopes: "console,jobs:read,jobs:write,dead:read,dead:write,schedules:write")
            let noConsole = try await server.token(tier: "enterprise", scopes: "jobs:read,dead:read")
            let (consumer, scheduler) = try dead.fleet(server, program: program.path("fix-me"))
            defer { consumer.signal(SIGKILL); scheduler.signal(SIGKILL) }
            let id = try await server.submit(jobs, #"{"type":"fix.me","payload":{"report":"q3"}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job is dead") {
                try await dead.deadList(server, operatorToken).count == 1
            }
            let (scheduleStatus, _, _) = try await server.request("PUT", "/v1/schedules/morning-report", token: operatorToken,
                                                                  body: #"{"cron":"0 9 * * *","time_zone":"Europe/Paris","type":"fix.me"}"#)
            #expect(scheduleStatus == 201 || scheduleStatus == 200)

            try await Browser.with { browser in
                // Not signed in: every page leads to the sign-in form, which refuses a token
                // without the console scope and takes one with it.
                try await browser.open(server.base + "/console/dead")
                #expect(try await browser.url.hasSuffix("/console/login?next=/console/dead"))
                try await browser.type(noConsole, into: "input[name=token]")
                try await browser.submit("#sign-in")
                #expect(try await browser.pageText.contains("lacks the 'console' scope"))
                try await browser.type(operatorToken, into: "input[name=token]")
                try await browser.submit("#sign-in")
                #expect(try await browser.url == server.base + "/console/dead", "back where the operator was going")
                let cookie = try #require(try await browser.cookies().first { $0["name"] as? String == "warren_console" })
                #expect(cookie["httpOnly"] as? Bool == true && cookie["sameSite"] as? String == "Strict" && cookie["path"] as? String == "/console")
                #expect(try await browser.run("return document.cookie") as? String == "", "the page's scripts cannot read the session")

                // The overview: a row per tier, its live part refreshed by the page's script.
                try await browser.open(server.base + "/console")
                let overview = try await browser.source
                for expected in ["enterprise", "premium", "free", "Consumers", "The last hour", "free: start latency", "<svg"] {
                    #expect(overview.contains(expected), "overview shows \(expected)")
                }
                try await TestServices.waitUntil(timeout: .seconds(20), "the live figures are refreshed") {
                    try await browser.run("return document.querySelector('#live').dataset.refreshed || ''") as? String != ""
                }
                #expect(try await browser.text("table.tiers tr.tier-free td:last-child") == "1", "free has one dead job")
                try await TestServices.waitUntil(timeout: .seconds(20), "the consumer's status and its broker subscription are shown") {
                    let live = try await browser.text("#live")
                    return live.contains("consumer ") && live.contains(" of 16")
                }

                // Jobs: the search finds the job; its page shows the failure, payload and timeline.
                try await browser.open(server.base + "/console/jobs?type=fix.me")
                #expect(try await browser.pageText.contains(id))
                try await browser.open(server.base + "/console/jobs?id=\(id)")
                #expect(try await browser.url == server.base + "/console/jobs/\(id)", "an id search opens the job")
                let jobPage = try await browser.pageText
                #expect(try await browser.text("#job-status") == "failed")
                #expect(jobPage.contains("the report template is missing") && jobPage.contains(#""report":"q3""#), "\(jobPage)")
                #expect(try await browser.find("#retry") != nil, "a dead job can be retried from its page")

                // A job held for later is cancelled from its page: it will never run.
                let later = try await server.submit(operatorToken, #"{"type":"fix.me","delay_seconds":3600}"#)
                try await browser.open(server.base + "/console/jobs/\(later)")
                #expect(try await browser.text("#job-status") == "scheduled")
                try await browser.submit("#cancel", confirming: true)  // the button asks first
                try await TestServices.waitUntil(timeout: .seconds(10), "the job's page says it is cancelled") {
                    (try? await browser.text("p.notice")) == "Cancelled: it will not run."
                }
                #expect(try await browser.text("#job-status") == "cancelled")
                #expect(try await server.job(operatorToken, later)["status"] as? String == "cancelled")

                try await browser.open(server.base + "/console/batches")
                #expect(try await browser.text("h1") == "Batches")
                try await browser.open(server.base + "/console/schedules")
                let schedules = try await browser.pageText
                #expect(schedules.contains("morning-report") && schedules.contains("Europe/Paris") && schedules.contains("09:00:00+01:00"),
                        "the next fires in the schedule's own zone: \(schedules)")
                // Disabled from its row, then enabled again.
                try await browser.submit("form[action$='/disable'] button")
                try await TestServices.waitUntil(timeout: .seconds(10), "the schedule is disabled") {
                    (try? await browser.text("p.notice")) == "morning-report is disabled."
                }
                let (_, _, disabled) = try await server.request("GET", "/v1/schedules/morning-report", token: operatorToken, contentType: nil)
                #expect(HTTP.object(disabled)["enabled"] as? Bool == false)
                try await browser.submit("form[action$='/enable'] button")
                try await TestServices.waitUntil(timeout: .seconds(10), "the schedule is enabled again") {
                    (try? await browser.text("p.notice")) == "morning-report is enabled."
                }
                let (_, _, enabled) = try await server.request("GET", "/v1/schedules/morning-report", token: operatorToken, contentType: nil)
                #expect(HTTP.object(enabled)["enabled"] as? Bool == true)

                // Dead letters: grouped by reason; the fix lands, the operator replays the job.
                try await browser.open(server.base + "/console/dead")
                let deadPage = try await browser.pageText
                #expect(deadPage.contains("permanent-failure") && deadPage.contains(id))

                // A form without the session's CSRF token, or from another origin, changes
                // nothing: the dead letter is still open, the session still signed in.
                let secret = try #require(cookie["value"] as? String)
                let session = ["Cookie": "warren_console=\(secret)"]
                let form = "application/x-www-form-urlencoded"
                let (noCSRF, _, _) = try await server.request("POST", "/console/dead/discard", contentType: form,
                                                              body: "reason=permanent-failure", headers: session)
                #expect(noCSRF == 403)
                let csrf = try #require(try await browser.run("return document.querySelector('input[name=csrf]').value") as? String)
                let (foreign, _, _) = try await server.request("POST", "/console/dead/discard", contentType: form,
                                                               body: "csrf=\(csrf)&reason=permanent-failure",
                                                               headers: session.merging(["Origin": "https://evil.example"]) { $1 })
                #expect(foreign == 403)
                #expect(try await dead.deadList(server, operatorToken).count == 1, "nothing discarded")
                let (stillIn, _, overviewPage) = try await server.request("GET", "/console", contentType: nil, headers: session)
                #expect(stillIn == 200 && overviewPage.contains("Overview</h1>"))
                // A value Postgres cannot hold is the request's fault: a 422 page, not JSON.
                let (refused, refusedHeaders, refusedPage) = try await server.request("GET", "/console/jobs?type=a%00b", contentType: nil,
                                                                                      headers: session)
                #expect(refused == 422 && refusedHeaders["content-type"]?.hasPrefix("text/html") == true
                        && refusedPage.contains("cannot be stored"), "\(refused) \(refusedPage.prefix(300))")
                #expect(program.touch("fixed"))
                try await browser.click("input[name=ids]")
                try await browser.submit("#replay-selected")
                #expect(try await browser.text("p.notice") == "Replayed 1 dead letter.")
                try await browser.open(server.base + "/console/jobs/\(id)")
                try await TestServices.waitUntil(timeout: .seconds(30), "the replayed job succeeded on its page") {
                    try await browser.open(server.base + "/console/jobs/\(id)")
                    return try await browser.text("#job-status") == "succeeded"
                }
                #expect(try await browser.pageText.contains(#"{"fixed": true}"#), "its result")
                #expect(program.lines("runs") == 2, "one failed run, one replayed run")
                #expect(try await dead.deadList(server, operatorToken).isEmpty)

                // Signing out ends the session: its cookie opens nothing any more.
                try await browser.submit(".signout button")
                #expect(try await browser.url.hasSuffix("/console/login"))
                // (The test client follows the redirect: it lands on the sign-in form.)
                let (after, _, page) = try await server.request("GET", "/console", contentType: nil, headers: ["Cookie": "warren_console=\(secret)"])
                #expect(after == 200 && page.contains(#"name="token""#) && !page.contains("Overview</h1>"))

                // Revoking the token ends a session it opened, at once.
                try await browser.type(operatorToken, into: "input[name=token]")
                try await browser.submit("#sign-in")
                #expect(try await browser.url == server.base + "/console")
                let revoked = try await Products.run("producer", ["tokens", "revoke", String(operatorToken.prefix(12))],
                                                     environment: server.environment)
                #expect(revoked.status == 0, "\(revoked.stderr)")
                try await browser.open(server.base + "/console/jobs")
                #expect(try await browser.url.hasSuffix("/console/login?next=/console/jobs"))
            }
            consumer.signal(SIGTERM)
            scheduler.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
            #expect(try await scheduler.wait() == 0)
        }
    }
}
