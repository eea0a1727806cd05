import Foundation
import Synchronization

/// How the stand-in misbehaves; `PUT /config` changes any of it while it runs.
struct StandInSettings: Sendable, Equatable {
    /// Share of requests answered 503 (with `Retry-After`).
    var failureRate = 0.0
    /// Share of requests answered 429 (with `Retry-After`).
    var rate429 = 0.0
    var retryAfterSeconds = 1
    /// Wait before answering (to make a client time out).
    var delayMilliseconds = 0
    /// Statuses for the next requests, in order, before the rates apply.
    var next: [Int] = []

    /// Why these settings cannot be used, or nil.
    var problem: String? {
        if !(0...1).contains(failureRate) { return "failure_rate must be 0...1, got \(failureRate)" }
        if !(0...1).contains(rate429) { return "rate_429 must be 0...1, got \(rate429)" }
        if failureRate + rate429 > 1 { return "failure_rate + rate_429 must be at most 1" }
        if !(0...86_400).contains(retryAfterSeconds) { return "retry_after_seconds must be 0...86400, got \(retryAfterSeconds)" }
        if !(0...600_000).contains(delayMilliseconds) { return "delay_ms must be 0...600000, got \(delayMilliseconds)" }
        if let bad = next.first(where: { !(200...599).contains($0) }) { return "next: statuses must be 200...599, got \(bad)" }
        return nil
    }

    /// Applies a `PUT /config` body: a JSON object whose keys change those settings only. An
    /// unknown key, or a value of the wrong type or range, is an error naming it.
    func updated(with body: Data) throws(StandInError) -> StandInSettings {
        struct Update: Decodable {
            var failureRate: Double?
            var rate429: Double?
            var retryAfterSeconds: Int?
            var delayMilliseconds: Int?
            var next: [Int]?

            enum CodingKeys: String, CodingKey, CaseIterable {
                case failureRate = "failure_rate", rate429 = "rate_429", retryAfterSeconds = "retry_after_seconds"
                case delayMilliseconds = "delay_ms", next
            }
        }
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw StandInError("expected a JSON object like {\"failure_rate\": 0.5}")
        }
        let known = Update.CodingKeys.allCases.map(\.rawValue)
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw StandInError("unknown setting '\(unknown)' (known: \(known.joined(separator: ", ")))")
        }
        let update: Update
        do {
            update = try JSONDecoder().decode(Update.self, from: body)
        } catch let DecodingError.typeMismatch(_, context) {
            throw StandInError("\(context.codingPath.first?.stringValue ?? "a setting") has the wrong type (rates are numbers, the others whole numbers, next a list of statuses)")
        } catch let DecodingError.dataCorrupted(context) {
            throw StandInError("\(context.codingPath.first?.stringValue ?? "a setting"): \(context.debugDescription)")
        } catch {
            throw StandInError("cannot read the settings: \(error)")
        }
        var settings = self
        if let value = update.failureRate { settings.failureRate = value }
        if let value = update.rate429 { settings.rate429 = value }
        if let value = update.retryAfterSeconds { settings.retryAfterSeconds = value }
        if let value = update.delayMilliseconds { settings.delayMilliseconds = value }
        if let value = update.next { settings.next = value }
        if let problem = settings.problem { throw StandInError(problem) }
        return settings
    }

    var json: String {
        #"{"failure_rate":\#(failureRate),"rate_429":\#(rate429),"retry_after_seconds":\#(retryAfterSeconds),"#
            + #""delay_ms":\#(delayMilliseconds),"next":[\#(next.map(String.init).joined(separator: ","))]}"#
    }
}

struct StandInError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// What the stand-in received, and the settings: shared by every request (a `Mutex`, held
/// only for short bookkeeping, never across the answer's delay).
final class Inbox: Sendable {
    struct Record: Sendable {
        var idempotencyKey: String?
        /// The request body as received.
        var body: [UInt8]
        var receivedAt: Date
        var status: Int
        /// A 200 for a key delivered before: nothing was sent again.
        var duplicate = false
    }

    private struct State {
        var settings: StandInSettings
        var records: [Record] = []
        /// Keys answered 200 once: a repeat is a `duplicate`, nothing is sent again.
        var delivered: Set<String> = []
    }

    private let state: Mutex<State>

    init(settings: StandInSettings) { state = Mutex(State(settings: settings)) }

    var settings: StandInSettings { state.withLock { $0.settings } }

    func update(_ body: Data) throws(StandInError) -> StandInSettings {
        try state.withLock { state throws(StandInError) in
            state.settings = try state.settings.updated(with: body)
            return state.settings
        }
    }

    /// The forced or random failure for the next request, if any (a 503 or 429 carries the
    /// `Retry-After` seconds), and the delay before answering.
    func draw() -> (status: Int?, retryAfter: Int, delay: Int) {
        state.withLock { state in
            let settings = state.settings
            if !state.settings.next.isEmpty {
                return (state.settings.next.removeFirst(), settings.retryAfterSeconds, settings.delayMilliseconds)
            }
            let roll = Double.random(in: 0..<1)
            let status: Int? = roll < settings.failureRate ? 503 : roll < settings.failureRate + settings.rate429 ? 429 : nil
            return (status, settings.retryAfterSeconds, settings.delayMilliseconds)
        }
    }

    /// Records a request and its answer. For a 200, says whether its key was delivered before.
    @discardableResult
    func record(_ record: Record) -> Bool {
        state.withLock { state in
            var record = record
            if record.status == 200, let key = record.idempotencyKey { record.duplicate = !state.delivered.insert(key).inserted }
            state.records.append(record)
            return record.duplicate
        }
    }

    /// `GET /received`: counts, then every request in arrival order.
    func receivedJSON() -> String {
        let (records, delivered) = state.withLock { ($0.records, $0.delivered.count) }
        let keys = Set(records.compactMap(\.idempotencyKey)).count
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let items = records.map { record -> String in
            let key = record.idempotencyKey.map(quoted) ?? "null"
            // The body as the JSON it is; anything else as a string.
            let body = (try? JSONSerialization.jsonObject(with: Data(record.body), options: [.fragmentsAllowed])) != nil
                ? String(decoding: record.body, as: UTF8.self) : quoted(String(decoding: record.body, as: UTF8.self))
            return #"{"idempotency_key":\#(key),"body":\#(body),"received_at":"\#(formatter.string(from: record.receivedAt))","status":\#(record.status),"duplicate":\#(record.duplicate)}"#
        }
        return #"{"count":\#(records.count),"distinct_keys":\#(keys),"delivered":\#(delivered),"received":[\#(items.joined(separator: ","))]}"#
    }

    /// `DELETE /received`: forgets every request and delivered key; returns how many requests.
    func clear() -> Int {
        state.withLock { state in
            defer {
                state.records.removeAll()
                state.delivered.removeAll()
            }
            return state.records.count
        }
    }
}

/// A JSON string literal.
func quoted(_ text: String) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: [text], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
    return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
}
