import Foundation
import Testing
@testable import WarrenAPI
import WarrenAMQP
@testable import WarrenJobs
@testable import WarrenStore
import WarrenSupport

/// The console's pure parts: forms, where a form may send the browser back to, the pages'
/// escaping, the charts' scale, the broker's counts turned into rates, and the latency history
/// the overview charts.
@Suite struct ConsoleTests {
    @Test func aFormKeepsEveryValueOfARepeatedNameAndDecodesItsEscapes() {
        let form = Console.Form("csrf=a%2Bb&ids=3&ids=5&reason=permanent-failure&note=two+words%21&empty=&flag")
        #expect(form["csrf"] == "a+b")
        #expect(form.all("ids") == ["3", "5"])
        #expect(form["note"] == "two words!")
        #expect(form["empty"] == "" && form["flag"] == "" && form["missing"] == nil)
    }

    @Test func aFormSendsTheBrowserBackOnlyToAConsolePageOfThisServer() {
        #expect(Console.localPath("/console/dead?reason=x") == "/console/dead?reason=x")
        for hostile in ["https://evil.example/console", "//evil.example/console", "/v1/jobs", "/console\\@evil", "/console\r\nSet-Cookie: x", nil] {
            #expect(Console.localPath(hostile) == "/console", "\(String(describing: hostile))")
        }
    }

    @Test func csrfTokensAreComparedWhole() {
        #expect(Console.constantTimeEqual("abc", "abc") && !Console.constantTimeEqual("abc", "abd") && !Console.constantTimeEqual("abc", "ab"))
    }

    @Test func whatUsersWroteIsEscapedInEveryPage() {
        let job = ConsoleStore.Job(id: UUID(), type: "report", tier: "free", tenant: "<b>acme</b>", status: "failed", attempts: 1,
                                   enqueuedAt: .now(), startedAt: nil, finishedAt: nil, error: #"<script>alert("x")</script>"#, result: nil, batchID: nil)
        let html = ConsolePages.page("job", title: "Job", session: ("acme", "wrn_x", "token", false),
                                     ["job": HTTPAPI.jobRow(job), "payload": #"{"a":"<img src=x onerror=alert(1)>"}"#, "events": [[String: Any]]()])
        #expect(!html.contains("<script>alert") && html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"))
        #expect(!html.contains("<img src=x") && !html.contains("<b>acme</b>"))
        #expect(html.contains(#"<input type="hidden" name="csrf" value="token">"#), "the sign-out form carries the session's CSRF token")
        #expect(!html.contains(#"id="cancel""#), "no cancel button for a failed job")
    }

    @Test func chartsScaleToARoundCeilingAndSayWhenThereIsNoData() {
        #expect(Chart.niceCeiling(0) == 1 && Chart.niceCeiling(0.3) == 0.5 && Chart.niceCeiling(7) == 10 && Chart.niceCeiling(120) == 200)
        let now: Int64 = 7_200_000
        let empty = Chart.svg(title: "free: jobs per second", unit: "", series: [.init(label: "published", color: "#000", points: [])],
                              from: now - 3_600_000, to: now)
        #expect(empty.contains("no data yet") && empty.hasPrefix("<svg") && empty.hasSuffix("</svg>"))
        let line = Chart.svg(title: "a <b>", unit: " ms", series: [.init(label: "p99", color: "#f00", points: [(now - 60_000, 40), (now, 80)])],
                             from: now - 3_600_000, to: now)
        #expect(line.contains("<polyline") && line.contains("100 ms") && line.contains("a &lt;b&gt;"))
    }

    @Test func theBrokersCumulativeCountsBecomeRatesBetweenSamples() {
        let samples = [BrokerStats.SampleJSON(sample: 1_200, timestamp: 120_000), .init(sample: 0, timestamp: 0), .init(sample: 600, timestamp: 60_000)]
        #expect(BrokerStats.rates(samples) == [.init(sample: 10, timestamp: 60_000), .init(sample: 10, timestamp: 120_000)])
        #expect(BrokerStats.rates([.init(sample: 5, timestamp: 0)]).isEmpty)
        #expect(BrokerStats.escaped("/") == "%2F" && BrokerStats.escaped("test-1") == "test%2D1")
    }

    @Test func aConsumersStatusReadsBackAsSentAndAMalformedOneIsIgnored() {
        let status = ConsumerStatus(consumerID: "host-1 \"free\"", tiers: [.premium, .free], concurrency: 4, configuredConcurrency: 16,
                                    prefetch: 250, inFlight: 3, openBreakers: ["smtp", "tickets"])
        let message = ControlMessage.status(status).outgoing
        #expect(ControlMessage(body: message.body) == .status(status))
        #expect(message.properties.expiration == "4000")
        #expect(ControlMessage(body: Array(#"{"action":"status","consumer_id":"c","tiers":["free"],"concurrency":"4"}"#.utf8)) == nil)
    }

    @Test func theLatencyHistoryKeepsAnHourByMinuteAndTheLatestReports() {
        var history = LatencyHistory()
        let minute: Int64 = 60_000
        let start: Int64 = 1_000 * minute
        history.record(PressureReport(tier: .free, consumerID: "a", p99Milliseconds: 90, jobs: 10, p50Milliseconds: 10), at: start)
        history.record(PressureReport(tier: .free, consumerID: "b", p99Milliseconds: 40, jobs: 30, p50Milliseconds: 30), at: start + 1_000)
        history.record(PressureReport(tier: .free, consumerID: "a", p99Milliseconds: 20, jobs: 5), at: start + minute)
        #expect(history.series(.free, now: start + minute) == [
            .init(minute: 1_000, jobs: 40, p50: 25, p99: 90),
            .init(minute: 1_001, jobs: 5, p50: 20, p99: 20),
        ], "p50 weighted by jobs, p99 the worst; a report without p50 counts its p99")
        #expect(history.series(.enterprise, now: start).isEmpty)
        let current = history.current(.free, now: start + minute + 1_000)
        #expect(current?.p99 == 20 && current?.jobs == 5, "only fresh reports: b's aged out")
        #expect(history.current(.free, now: start + minute + 10_000) == nil, "nothing heard lately")
        #expect(history.series(.free, now: start + 60 * minute).map(\.minute) == [1_001], "an hour is kept")
    }
}
