import Testing
import WarrenJobs
import WarrenResilience
import WarrenSupport

struct ShedPolicyTests {
    let policy = ShedPolicy(thresholds: [.free: 100, .premium: 200, .enterprise: 400])

    func shed(_ backlog: [Tier: Int], was: Set<Tier> = []) -> Set<Tier> {
        Set(Tier.allCases.filter { policy.sheds($0, backlog: backlog, wasShedding: was.contains($0)) })
    }

    @Test func aTiersLoadCountsItselfAndEveryTierAboveIt() {
        let backlog: [Tier: Int] = [.enterprise: 1, .premium: 10, .free: 100]
        #expect(policy.load(for: .enterprise, backlog: backlog) == 1)
        #expect(policy.load(for: .premium, backlog: backlog) == 11)
        #expect(policy.load(for: .free, backlog: backlog) == 111)
    }

    @Test func risingPressureShedsFreeThenPremiumThenEnterprise() {
        #expect(shed([:]).isEmpty)
        #expect(shed([.enterprise: 99]).isEmpty)
        #expect(shed([.enterprise: 100]) == [.free])
        #expect(shed([.enterprise: 150, .premium: 50]) == [.free, .premium])
        #expect(shed([.enterprise: 400]) == [.free, .premium, .enterprise])
    }

    @Test func lowerTiersBacklogsNeverShedAHigherTier() {
        #expect(shed([.free: 1_000_000]) == [.free])
        #expect(shed([.free: 1_000_000, .premium: 1_000_000]) == [.free, .premium])
    }

    @Test func aShedTierIsServedAgainOnlyBelowNinetyPercent() {
        #expect(shed([.free: 95], was: [.free]) == [.free])
        #expect(shed([.free: 90], was: [.free]) == [.free])
        #expect(shed([.free: 89], was: [.free]).isEmpty)
        #expect(shed([.free: 95]).isEmpty, "not shed before it reaches the threshold")
    }

    @Test func environmentSetsThresholdsAndZeroTurnsATierOff() throws {
        let policy = try ShedPolicy(environment: ["WARREN_SHED_BACKLOG_FREE": "0", "WARREN_SHED_BACKLOG_PREMIUM": "7"])
        #expect(policy.thresholds[.free] == nil)
        #expect(policy.thresholds[.premium] == 7)
        #expect(policy.thresholds[.enterprise] == ShedPolicy.defaults[.enterprise])
        #expect(!policy.sheds(.free, backlog: [.free: 1_000_000_000], wasShedding: false))
        #expect(try ShedPolicy(environment: [:]) == ShedPolicy())
    }

    @Test func aBadThresholdNamesTheVariable() {
        #expect {
            try ShedPolicy(environment: ["WARREN_SHED_BACKLOG_ENTERPRISE": "lots"])
        } throws: { error in
            "\(error)".contains("WARREN_SHED_BACKLOG_ENTERPRISE")
        }
    }

    @Test func aPaidTierBehindItsTargetShedsFreeAndEnterpriseFarBehindShedsPremium() {
        let targets = TierTargets([.enterprise: .milliseconds(50), .premium: .milliseconds(250)])
        #expect(ShedPolicy.shedForLatency(pressure: [:], targets: targets) == [])
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 50, .premium: 250], targets: targets) == [], "at the target is not behind")
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 51], targets: targets) == [.free])
        #expect(ShedPolicy.shedForLatency(pressure: [.premium: 251], targets: targets) == [.free])
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 100], targets: targets) == [.free])
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 101], targets: targets) == [.free, .premium])
        #expect(ShedPolicy.shedForLatency(pressure: [.premium: 100_000], targets: targets) == [.free], "premium never sheds premium")
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 100_000, .free: 100_000], targets: targets) == [.free, .premium],
                "enterprise is never shed for latency")
        #expect(ShedPolicy.shedForLatency(pressure: [.enterprise: 100_000], targets: TierTargets([.premium: .milliseconds(250)])) == [],
                "a tier without a target is not watched")
    }
}

