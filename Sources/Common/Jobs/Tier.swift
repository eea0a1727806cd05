/// A service tier. Each has its own quorum queue and consumer pool.
package enum Tier: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case enterprise
    case premium
    case free

    /// The routing key on `warren.jobs` (the tier name).
    package var routingKey: String { rawValue }
    /// The tier's quorum queue, `warren.jobs.<tier>`.
    package var queueName: String { "warren.jobs.\(rawValue)" }
    package var description: String { rawValue }

    /// Parses a tier name; throws a message listing the valid ones.
    package static func parse(_ text: String) throws(JobError) -> Tier {
        guard let tier = Tier(rawValue: text.lowercased()) else {
            throw JobError(field: "tier", message: "unknown tier '\(text)' (expected one of \(Tier.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return tier
    }
}

/// Invalid job input or a malformed job message: which field, and what is wrong.
package struct JobError: Error, Sendable, Equatable, CustomStringConvertible {
    package var field: String?
    package var message: String

    package init(field: String? = nil, message: String) {
        self.field = field
        self.message = message
    }

    package var description: String { message }
}
