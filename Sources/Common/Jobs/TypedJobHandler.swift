import Foundation

/// A handler whose payload is a `Decodable` type: Warren decodes the job's JSON before calling
/// ``run(_:context:)``, and a payload that does not decode fails the job **permanently** (a retry
/// would not make it decode) with a reason that names the field, such as
/// `payload does not decode as WelcomeEmail: field 'user.email': missing`.
///
/// ```swift
/// struct WelcomeEmail: Codable, Sendable {
///     var email: String
///     var name: String
/// }
///
/// struct SendWelcomeEmail: TypedJobHandler {
///     let type = "email.welcome"
///     func run(_ payload: WelcomeEmail, context: JobContext) async throws -> JobOutcome {
///         try await mailer.send(to: payload.email, idempotencyKey: context.idempotencyKey)
///         return .success
///     }
/// }
/// ```
///
/// An error thrown by ``run(_:context:)`` is a retryable failure (backoff, then dead once the
/// retry policy's attempts are spent), except ``PermanentJobFailure``, which fails the job for
/// good. Part of Warren's public API.
public protocol TypedJobHandler: JobHandler {
    /// The payload's type, decoded from the job's JSON with `JSONDecoder()`.
    associatedtype Payload: Decodable & Sendable
    /// Runs one job with its decoded payload.
    func run(_ payload: Payload, context: JobContext) async throws -> JobOutcome
}

extension TypedJobHandler {
    /// Decodes the payload and calls ``run(_:context:)``: see ``TypedJobHandler``.
    public func run(_ context: JobContext) async -> JobOutcome {
        let payload: Payload
        do {
            payload = try JSONDecoder().decode(Payload.self, from: Data(context.payload))
        } catch {
            return .permanentFailure(error: PayloadDecoding.reason(error, expected: Payload.self))
        }
        do {
            return try await run(payload, context: context)
        } catch let failure as PermanentJobFailure {
            return .permanentFailure(error: failure.message)
        } catch {
            return .retry(String(describing: error))
        }
    }
}

/// Thrown by a ``TypedJobHandler`` to fail its job for good (no retry), with `message` as the
/// recorded error. Part of Warren's public API.
public struct PermanentJobFailure: Error, Sendable, CustomStringConvertible {
    /// The recorded error.
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Says why a payload did not decode, naming the field, in words a user can act on.
package enum PayloadDecoding {
    package static func reason(_ error: any Error, expected: Any.Type) -> String {
        let what = "payload does not decode as \(expected)"
        guard let error = error as? DecodingError else { return "\(what): \(error)" }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(what): field '\(path(context.codingPath + [key]))': missing"
        case .valueNotFound(_, let context):
            return "\(what): field '\(path(context.codingPath))': null, a value is required"
        case .typeMismatch(let type, let context):
            return "\(what): field '\(path(context.codingPath))': expected a \(type)"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "\(what): not valid JSON" }
            return "\(what): field '\(path(context.codingPath))': \(context.debugDescription)"
        @unknown default:
            return "\(what): \(error)"
        }
    }

    /// `user.email`, `items[2].sku`; `(root)` for the payload itself.
    private static func path(_ keys: [any CodingKey]) -> String {
        var text = ""
        for key in keys {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return text.isEmpty ? "(root)" : text
    }
}
