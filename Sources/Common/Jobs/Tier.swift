/// A service tier. Each has its own quorum queues (one per tenant lane) and consumer pool.
/// Part of Warren's public API.
public enum Tier: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case enterprise
    case premium
    case free

    /// Tenant lanes per tier: a tier's jobs are spread over this many quorum queues by their
    /// tenant (see ``lane(tenant:)``), and its consumers take from all of them in turn, so one
    /// tenant's backlog waits in its own lane instead of in front of every other tenant's jobs.
    package static let lanes = 8

    /// The lane of a tenant's jobs: FNV-1a (32 bit) of its UTF-8 bytes, modulo ``lanes``;
    /// jobs without a tenant (one tenant, as far as fairness goes) are in lane 0. Every
    /// publisher computes it the same way, so a tenant's jobs stay in one queue, in order.
    package static func lane(tenant: String?) -> Int {
        guard let tenant else { return 0 }
        var hash: UInt32 = 2_166_136_261
        for byte in tenant.utf8 {
            hash ^= UInt32(byte)
            hash = hash &* 16_777_619
        }
        return Int(hash % UInt32(lanes))
    }

    /// The routing key of lane 0 on `warren.jobs` (the tier name) ...
    package var routingKey: String { rawValue }
    /// ... and of any lane: the tier name, then `.<lane>` past lane 0.
    package func routingKey(lane: Int) -> String { lane == 0 ? rawValue : "\(rawValue).\(lane)" }
    /// The quorum queue of lane 0, `warren.jobs.<tier>` (the tier's queue before lanes) ...
    package var queueName: String { "warren.jobs.\(rawValue)" }
    /// ... and of any lane: `warren.jobs.<tier>.<lane>` past lane 0.
    package func queueName(lane: Int) -> String { lane == 0 ? queueName : "\(queueName).\(lane)" }
    /// The queue holding `tenant`'s jobs of this tier.
    package func queueName(tenant: String?) -> String { queueName(lane: Self.lane(tenant: tenant)) }
    /// Every lane's queue, lane 0 first.
    package var queueNames: [String] { (0..<Self.lanes).map(queueName(lane:)) }
    public var description: String { rawValue }

    /// Parses a tier name; throws a message listing the valid ones.
    package static func parse(_ text: String) throws(JobError) -> Tier {
        guard let tier = Tier(rawValue: text.lowercased()) else {
            throw JobError(field: "tier", message: "unknown tier '\(text)' (expected one of \(Tier.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return tier
    }
}

/// Invalid job input or a malformed job message: which field, and what is wrong.
/// Part of Warren's public API (``JobClient`` throws it for a job it refuses).
public struct JobError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The field at fault (`type`, `tenant`, `concurrency_key`, ...), when one is.
    public var field: String?
    /// What is wrong, fit to show a user.
    public var message: String

    package init(field: String? = nil, message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { message }
}
