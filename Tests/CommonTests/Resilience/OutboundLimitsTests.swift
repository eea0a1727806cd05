import Testing
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenNotify
@testable import WarrenResilience
@testable import WarrenStore
@testable import WarrenSupport
@testable import WarrenWorker

struct OutboundLimitsTests {
    @Test func limitsAndTheTypesThatSpendThemComeFromTheEnvironment() throws {
        let limits = try OutboundLimits(environment: ["WARREN_RATE_LIMITS": "ticket-api=60/min, geo=10/s, slow=2/h",
                                                      "WARREN_RATE_LIMITED_TYPES": "ticket.create=ticket-api,ticket.update=ticket-api,geo.lookup=geo"])
        #expect(limits.byType["ticket.create"] == .init(key: "ticket-api", rate: 1, burst: 1))
        #expect(limits.byType["ticket.update"]?.key == "ticket-api")
        #expect(limits.byType["geo.lookup"] == .init(key: "geo", rate: 10, burst: 10))
        #expect(limits.byType["noop"] == nil)
        #expect(try OutboundLimits(environment: [:]).byType.isEmpty)
    }

    @Test func badLimitsNameTheVariable() {
        for (key, environment) in [("WARREN_RATE_LIMITS", ["WARREN_RATE_LIMITS": "api=fast"]),
                                   ("WARREN_RATE_LIMITS", ["WARREN_RATE_LIMITS": "api=10/week"]),
                                   ("WARREN_RATE_LIMITED_TYPES", ["WARREN_RATE_LIMITED_TYPES": "t=missing"])] {
            #expect {
                try OutboundLimits(environment: environment)
            } throws: { error in
                "\(error)".contains(key)
            }
        }
    }

    @Test func aWaitingJobHopsTowardItsTurnWithoutPassingIt() {
        #expect(OutboundLimits.hop(toward: .milliseconds(300)).label == "1s", "under the shortest delay: the shortest")
        #expect(OutboundLimits.hop(toward: .seconds(4)).label == "1s")
        #expect(OutboundLimits.hop(toward: .seconds(29)).label == "5s")
        #expect(OutboundLimits.hop(toward: .seconds(1_000)).label == "10m")
        #expect(OutboundLimits.hop(toward: .seconds(100_000)).label == "1h")
    }

    @Test func theDeferralCarriesItsTurnAndSpendsNoAttempt() {
        var job = JobEnvelope(type: "ticket.create", tier: .free, payload: Array("{}".utf8))
        job.attempt = 2
        let plan = Settlement.rateLimited(job, key: "ticket-api", wait: .seconds(7), turn: 1_234)
        guard case .retry(let next, let delay, let headers)? = plan.publish else {
            Issue.record("no deferral: \(plan)")
            return
        }
        #expect(next.attempt == 2 && next.seq == job.seq + 1)
        #expect(delay.label == "5s")
        #expect(headers[OutboundLimits.turnHeader] == "1234")
        #expect(plan.counted == "deferred" && plan.status == .retrying)
    }

    @Test func theNotificationServiceGetsOneLimitPerDestination() throws {
        let notify = try NotifyConfiguration(environment: ["WARREN_NOTIFY_URL": "http://Notify.example:8025/notify?x=1",
                                                           "WARREN_NOTIFY_RATE_LIMIT": "60/min"])
        let limit = try #require(notify.destinationLimit)
        #expect(limit.key == "destination http://notify.example:8025", "scheme, host and port only: every path shares it")
        #expect(limit.rate == 1 && limit.burst == 1)
        let other = try NotifyConfiguration(environment: ["WARREN_NOTIFY_URL": "http://notify.example:8025/other",
                                                          "WARREN_NOTIFY_RATE_LIMIT": "60/min"])
        #expect(other.destinationLimit?.key == limit.key)
        #expect(try NotifyConfiguration(environment: ["WARREN_NOTIFY_RATE_LIMIT": "5/s"]).destinationLimit == nil, "no URL, no destination")
        #expect(try NotifyConfiguration(environment: ["WARREN_NOTIFY_URL": "http://a:1"]).destinationLimit == nil, "no rate, no limit")
        #expect(throws: SettingsError.self) { try NotifyConfiguration(environment: ["WARREN_NOTIFY_RATE_LIMIT": "lots"]) }
        #expect(throws: SettingsError.self) { try NotifyConfiguration(environment: ["WARREN_NOTIFY_RATE_LIMIT": "0/s"]) }
    }
}
