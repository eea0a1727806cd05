import Foundation
import Testing
import WarrenSupport

/// docs/openapi.yaml and the server's routes stay in step: every route `producer routes`
/// lists is described, and every described operation is a route.
@Suite struct OpenAPITests {
    /// `METHOD /path` for each operation under `paths:` (paths at two spaces, methods at four:
    /// the layout the file keeps; see its header).
    static func documentedOperations(_ yaml: String) -> [String] {
        var operations: [String] = []
        var inPaths = false
        var path: String?
        let methods: Set<String> = ["get", "put", "post", "delete", "patch", "head", "options"]
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" "), !line.isEmpty, !line.hasPrefix("#") {
                inPaths = line.hasPrefix("paths:")
                continue
            }
            guard inPaths else { continue }
            if line.hasPrefix("  /"), !line.hasPrefix("   "), line.hasSuffix(":") {
                path = String(line.dropFirst(2).dropLast())
            } else if line.hasPrefix("    "), !line.hasPrefix("     "), let path, line.hasSuffix(":") {
                let method = String(line.dropFirst(4).dropLast())
                if methods.contains(method) { operations.append("\(method.uppercased()) \(path)") }
            }
        }
        return operations.sorted()
    }

    @Test func everyRouteIsDescribedAndEveryDescribedOperationIsARoute() async throws {
        let spec = try String(contentsOf: Products.repositoryRoot.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
        let documented = Self.documentedOperations(spec)
        let listed = try await Products.run("producer", ["routes"])
        #expect(listed.status == 0, "\(listed.stderr)")
        let routes = listed.stdout.split(separator: "\n").map(String.init).sorted()
        #expect(routes.count >= 8, "\(routes)")
        #expect(Set(routes).subtracting(documented).isEmpty, "routes missing from docs/openapi.yaml: \(Set(routes).subtracting(documented).sorted())")
        #expect(Set(documented).subtracting(routes).isEmpty, "described but not served: \(Set(documented).subtracting(routes).sorted())")
    }

    @Test func theParserReadsPathsAndMethodsOnly() {
        let yaml = """
            openapi: 3.1.0
            paths:
              /a/{id}:
                get:
                  responses:
                    "200":
                      description: ok
                delete:
                  summary: x
              /b:
                post:
                  requestBody: {}
            components:
              schemas:
                get:
                  type: object
            """
        #expect(Self.documentedOperations(yaml) == ["DELETE /a/{id}", "GET /a/{id}", "POST /b"])
    }

    /// The `TimeZone` schema's enum (`enum: [A, B, ...]`, over several lines).
    static func documentedZones(_ yaml: String) -> Set<String> {
        guard let schema = yaml.range(of: "\n    TimeZone:\n"), let start = yaml.range(of: "enum: [", range: schema.upperBound..<yaml.endIndex),
              let end = yaml.range(of: "]", range: start.upperBound..<yaml.endIndex) else { return [] }
        return Set(yaml[start.upperBound..<end.lowerBound].split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
    }

    /// The spec's time zones are exactly those the server takes (``CronSchedule/zone(_:)``)
    /// among the tz database's files, so a schema-valid zone is never refused and every zone
    /// the server knows is documented.
    @Test func theDocumentedTimeZonesAreTheOnesTheServerAccepts() throws {
        let spec = try String(contentsOf: Products.repositoryRoot.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
        let documented = Self.documentedZones(spec)
        #expect(documented.count > 400 && documented.contains("Europe/London") && documented.contains("UTC"), "\(documented.count)")
        let root = URL(fileURLWithPath: "/usr/share/zoneinfo")
        var accepted: Set<String> = []
        let walker = FileManager.default.enumerator(atPath: root.path)
        while let path = walker?.nextObject() as? String {
            guard !path.hasPrefix("posix"), !path.hasPrefix("right"), (try? CronSchedule.zone(path)) != nil else { continue }
            accepted.insert(path)
        }
        #expect(documented.subtracting(accepted).isEmpty, "documented but refused: \(documented.subtracting(accepted).sorted())")
        #expect(accepted.subtracting(documented).isEmpty, "accepted but not documented: \(accepted.subtracting(documented).sorted())")
        #expect(throws: (any Error).self) { try CronSchedule.zone("EST") }
    }
}
