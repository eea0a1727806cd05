import Foundation

/// A loopback TCP client that sends exactly the bytes a test gives (half a request line, a
/// 100 KB header) and reads until the server closes the connection or a deadline passes:
/// what URLSession cannot do. A blocking socket on a thread of its own (never Swift's
/// cooperative pool).
enum RawHTTP {
    struct Exchange: Sendable {
        /// Everything the server sent.
        var received: [UInt8]
        /// The server closed the connection (EOF or reset) before the deadline.
        var closedByServer: Bool

        /// The status code of the first response, if one came.
        var status: Int? {
            let text = String(decoding: received.prefix(64), as: UTF8.self)
            let parts = text.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1.") else { return nil }
            return Int(parts[1])
        }

        /// The first response's header fields (names lowercased) and body.
        var headersAndBody: ([String: String], String) {
            let text = String(decoding: received, as: UTF8.self)
            guard let end = text.range(of: "\r\n\r\n") else { return ([:], "") }
            var headers: [String: String] = [:]
            for line in text[..<end.lowerBound].split(separator: "\r\n").dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return (headers, String(text[end.upperBound...]))
        }
    }

    /// Connects to 127.0.0.1:`port`, sends `bytes`, then reads until the server closes or
    /// `timeout` has passed since the bytes were sent.
    static func exchange(port: Int, send bytes: [UInt8], readFor timeout: Duration) async throws -> Exchange {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(with: Result { try blockingExchange(port: port, bytes: bytes, timeout: timeout) })
            }.start()
        }
    }

    private static func blockingExchange(port: Int, bytes: [UInt8], timeout: Duration) throws -> Exchange {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { throw POSIXError(.ECONNREFUSED) }
        var sent = 0
        while sent < bytes.count {
            let written = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { break }  // the server may close before it has read everything
            sent += written
        }
        var wait = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let deadline = ContinuousClock.now + timeout
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while ContinuousClock.now < deadline {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received += buffer[..<count]
            } else if count == 0 {
                return Exchange(received: received, closedByServer: true)
            } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                return Exchange(received: received, closedByServer: true)  // reset
            }
        }
        return Exchange(received: received, closedByServer: false)
    }
}
