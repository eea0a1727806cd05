import Foundation
import Synchronization

/// A loopback TCP relay to `upstreamPort`, which a test can cut: every relayed connection is
/// shut down and new ones are refused, as when a host loses its network path to the database.
/// Or stall: bytes stop flowing both ways while every socket stays open (no FIN, no RST), as
/// when a network path silently drops everything; only heartbeats can tell.
/// Blocking sockets on threads of its own (never Swift's cooperative pool).
final class TCPProxy: Sendable {
    let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let sockets = Mutex<(open: Set<Int32>, cut: Bool)>(([], false))
    /// Relayed connections whose bytes are held (neither read nor forwarded) while stalled.
    private let stalled = Mutex<Set<Int32>>([])
    /// How many connections the relay has admitted so far (a reconnect adds one).
    var admitted: Int { admittedCount.withLock { $0 } }
    private let admittedCount = Mutex(0)

    init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var reuse: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && listen(fd, 64) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw POSIXError(.EADDRNOTAVAIL)
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    /// Shuts every relayed connection down and refuses new ones.
    func cut() {
        let open = sockets.withLock { state -> Set<Int32> in
            state.cut = true
            return state.open
        }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// Stops forwarding on every connection relayed so far, keeping their sockets open: the
    /// peers see silence, not a close. Connections made afterwards are relayed normally (a
    /// client that notices and reconnects gets through).
    func stall() {
        let open = sockets.withLock { $0.open }
        stalled.withLock { $0.formUnion(open) }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return address
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }  // the listener was shut down
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: upstreamPort)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            let admitted = sockets.withLock { state -> Bool in
                guard connected, !state.cut else { return false }
                state.open.formUnion([client, upstream])
                return true
            }
            guard admitted else {
                close(client)
                close(upstream)
                continue
            }
            admittedCount.withLock { $0 += 1 }
            Thread { [self] in relay(from: client, to: upstream) }.start()
            Thread { [self] in relay(from: upstream, to: client) }.start()
        }
    }

    /// Stalled: hold everything, read nothing (the kernel buffers fill, then the peer's writes
    /// block), close nothing; until ``cut()`` ends the relay.
    private func holdWhileStalled(_ source: Int32, _ destination: Int32) {
        while stalled.withLock({ $0.contains(source) || $0.contains(destination) }), !sockets.withLock({ $0.cut }) {
            usleep(50_000)
        }
    }

    private func relay(from source: Int32, to destination: Int32) {
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            holdWhileStalled(source, destination)
            let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            // A read that was waiting when the stall began forwards nothing either.
            holdWhileStalled(source, destination)
            var sent = 0
            while sent < count {
                // MSG_NOSIGNAL: after `cut()` the peer is gone, and a plain write would raise
                // SIGPIPE and end the whole test process.
                let written = buffer.withUnsafeBytes { send(destination, $0.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL)) }
                guard written > 0 else { break }
                sent += written
            }
            guard sent == count else { break }
        }
        shutdown(destination, Int32(SHUT_WR))
        shutdown(source, Int32(SHUT_RD))
    }
}
