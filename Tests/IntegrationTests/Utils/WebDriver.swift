import Foundation
import Testing

/// A real browser for the console's tests: Debian's headless Chromium driven by its
/// `chromedriver` over the W3C WebDriver protocol (plain JSON over HTTP, through ``HTTP``).
/// `./infra/local/test` installs both; without them a local run skips loudly, and under
/// `CI=true` their absence fails the test.
final class Browser: Sendable {
    static let driverPath = "/usr/bin/chromedriver"
    static let chromiumPath = "/usr/bin/chromium"

    static var installed: Bool {
        FileManager.default.isExecutableFile(atPath: driverPath) && FileManager.default.isExecutableFile(atPath: chromiumPath)
    }

    /// Whether a test that needs the browser runs: a local run without it says so loudly and skips.
    static var available: Bool {
        if installed { return true }
        if TestServices.required { return true }  // and fails in `with`, saying what is missing
        FileHandle.standardError.write(Data("""

            ********************************************************************************
            SKIPPING browser tests: \(chromiumPath) or \(driverPath) is missing.
            ./infra/local/test installs Debian's chromium and chromium-driver.
            ********************************************************************************

            """.utf8))
        return false
    }

    let driver: RunningProduct
    let base: String
    let session: String

    private init(driver: RunningProduct, base: String, session: String) {
        self.driver = driver
        self.base = base
        self.session = session
    }

    /// Runs `body` with a fresh headless browser (a profile of its own), closed afterwards.
    static func with<T: Sendable>(_ body: (Browser) async throws -> T) async throws -> T {
        guard installed else {
            Issue.record("\(chromiumPath) and \(driverPath) are required under CI (Debian's chromium and chromium-driver)")
            throw BrowserError(message: "no browser")
        }
        let port = try OwnPostgres.freePort()
        let driver = try RunningProduct(executable: URL(fileURLWithPath: driverPath), ["--port=\(port)"])
        defer { driver.signal(SIGKILL) }
        let base = "http://127.0.0.1:\(port)"
        try await TestServices.waitUntil(timeout: .seconds(30), "chromedriver answers") {
            (try? await HTTP.request("GET", base + "/status", contentType: nil).0) == 200
        }
        let capabilities = #"""
            {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "\#(chromiumPath)",
             "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}}}}
            """#
        let created = try await call(base, "POST", "/session", capabilities)
        guard let session = (created as? [String: Any])?["sessionId"] as? String else {
            throw BrowserError(message: "no session: \(String(describing: created))")
        }
        let browser = Browser(driver: driver, base: base, session: session)
        do {
            let value = try await body(browser)
            _ = try? await call(base, "DELETE", "/session/\(session)", nil)
            return value
        } catch {
            _ = try? await call(base, "DELETE", "/session/\(session)", nil)
            throw error
        }
    }

    func open(_ url: String) async throws { _ = try await command("POST", "/url", ["url": url]) }

    var url: String { get async throws { try await command("GET", "/url", nil) as? String ?? "" } }

    /// The first element matching `css`, or nil.
    func find(_ css: String) async throws -> String? {
        let found = try await command("POST", "/elements", ["using": "css selector", "value": css]) as? [[String: Any]] ?? []
        return found.first?.values.first as? String
    }

    func require(_ css: String) async throws -> String {
        guard let element = try await find(css) else { throw BrowserError(message: "no element matches \(css) on \(try await url)") }
        return element
    }

    func type(_ text: String, into css: String) async throws {
        _ = try await command("POST", "/element/\(try await require(css))/value", ["text": text])
    }

    func click(_ css: String) async throws { _ = try await command("POST", "/element/\(try await require(css))/click", [:]) }

    /// Clicks `css`, which submits a form or follows a link (accepting the `confirm()` it asks
    /// first when `confirming`), and waits until the next page has loaded: a click answers when
    /// the click is done, not necessarily the navigation it starts.
    func submit(_ css: String, confirming: Bool = false) async throws {
        _ = try await run("window.warrenPageLeft = true")
        try await click(css)
        if confirming { try await acceptAlert() }
        try await TestServices.waitUntil(timeout: .seconds(20), "the page after clicking \(css) loads") {
            (try? await self.run("return !window.warrenPageLeft && document.readyState === 'complete'")) as? Bool == true
        }
    }

    func text(_ css: String) async throws -> String {
        try await command("GET", "/element/\(try await require(css))/text", nil) as? String ?? ""
    }

    /// The page's visible text.
    var pageText: String { get async throws { try await text("body") } }

    /// The page's markup as it is now (scripts' changes included).
    var source: String { get async throws { try await run("return document.documentElement.outerHTML") as? String ?? "" } }

    /// Runs `script` in the page; its return value.
    func run(_ script: String, _ arguments: [Any] = []) async throws -> Any? {
        try await command("POST", "/execute/sync", ["script": script, "args": arguments])
    }

    /// Accepts the open `confirm()` (or `alert()`) dialog.
    func acceptAlert() async throws { _ = try await command("POST", "/alert/accept", [:]) }

    func cookies() async throws -> [[String: Any]] { try await command("GET", "/cookie", nil) as? [[String: Any]] ?? [] }

    func screenshot() async throws -> Data {
        guard let text = try await command("GET", "/screenshot", nil) as? String, let data = Data(base64Encoded: text) else {
            throw BrowserError(message: "no screenshot")
        }
        return data
    }

    private func command(_ method: String, _ path: String, _ body: [String: Any]?) async throws -> Any? {
        let text = try body.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
        return try await Self.call(base, method, "/session/\(session)\(path)", text)
    }

    private static func call(_ base: String, _ method: String, _ path: String, _ body: String?) async throws -> Any? {
        let (status, _, text) = try await HTTP.request(method, base + path, body: body ?? (method == "POST" ? "{}" : nil), timeout: .seconds(60))
        let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) as? [String: Any]
        guard status == 200 else { throw BrowserError(message: "\(method) \(path): \(status) \(text.prefix(500))") }
        return object?["value"] ?? nil
    }
}

struct BrowserError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
