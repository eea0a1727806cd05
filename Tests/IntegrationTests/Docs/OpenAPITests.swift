import Foundation
import Testing

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
}
