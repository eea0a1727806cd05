import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import WarrenSupport

/// The bits of RabbitMQ's management HTTP API the tests use to act on the broker from
/// outside (closing a connection as a network failure would).
enum Management {
    /// `base` is the shared test broker's management URL unless a test runs a node of its own.
    static func request(_ method: String, _ path: String, json: String? = nil,
                        base: String = TestServices.managementURL) async throws -> (Int, Data) {
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method)
        if let json {
            request.body = .bytes(ByteBuffer(string: json))
            request.headers.replaceOrAdd(name: "Content-Type", value: "application/json")
        }
        request.headers.replaceOrAdd(name: "Authorization", value: "Basic " + Data("guest:guest".utf8).base64EncodedString())
        request.headers.replaceOrAdd(name: "X-Reason", value: "warren-tests")
        let (status, _, body) = try await HTTP.send(request)
        return (status, Data(body))
    }

    /// Names of the broker's connections whose client-given name is `clientName`.
    static func connections(named clientName: String) async throws -> [String] {
        let (_, data) = try await request("GET", "/api/connections")
        let list = (try JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        return list.compactMap { connection in
            let properties = connection["client_properties"] as? [String: Any]
            guard properties?["connection_name"] as? String == clientName else { return nil }
            return connection["name"] as? String
        }
    }

    /// Force-closes every connection named `clientName`; returns how many.
    static func closeConnections(named clientName: String) async throws -> Int {
        let names = try await connections(named: clientName)
        for name in names {
            let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
            _ = try await request("DELETE", "/api/connections/\(encoded)")
        }
        return names.count
    }

    /// Creates a virtual host that guest may use fully; tests that need the real tier queues
    /// to themselves (their depth, their consumers) work in one of their own.
    static func createVhost(_ name: String) async throws {
        let (status, body) = try await request("PUT", "/api/vhosts/\(name)", json: "{}")
        guard (200..<300).contains(status) else { throw ManagementError(status: status, body: body) }
        try await grantGuest(name)
    }

    static func grantGuest(_ vhost: String) async throws {
        let (granted, grantBody) = try await request("PUT", "/api/permissions/\(vhost)/guest",
                                                     json: #"{"configure":".*","write":".*","read":".*"}"#)
        guard (200..<300).contains(granted) else { throw ManagementError(status: granted, body: grantBody) }
    }

    /// Takes guest's access to `vhost` away: its reconnects are refused until ``grantGuest(_:)``
    /// (the broker is "down" for that client, while the other tests go on).
    static func revokeGuest(_ vhost: String) async throws {
        let (status, body) = try await request("DELETE", "/api/permissions/\(vhost)/guest")
        guard (200..<300).contains(status) else { throw ManagementError(status: status, body: body) }
    }

    /// A policy on `vhost` for queues matching `pattern` (`definition` is its JSON object).
    static func setPolicy(vhost: String, name: String, pattern: String, definition: String) async throws {
        let (status, body) = try await request("PUT", "/api/policies/\(vhost)/\(name)",
                                               json: #"{"pattern":\#(JSONText.quoted(pattern)),"definition":\#(definition),"apply-to":"queues","priority":10}"#)
        guard (200..<300).contains(status) else { throw ManagementError(status: status, body: body) }
    }

    static func deleteVhost(_ name: String) async throws {
        _ = try await request("DELETE", "/api/vhosts/\(name)")
    }
}

struct ManagementError: Error, CustomStringConvertible {
    var status: Int
    var body: Data
    var description: String { "management API answered \(status): \(String(decoding: body, as: UTF8.self))" }
}
