import Foundation
import Synchronization
import WarrenSupport

/// Job identifiers are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits,
/// so ids sort by creation time and index well.
package enum JobID {
    /// A new UUIDv7 for `timestamp` (defaults to now). The random bits come from a
    /// xoshiro256** generator seeded from the system's CSPRNG once per process: ids must be
    /// unique, not secret, and a `getrandom` call per id was a tenth of a bulk publish.
    package static func make(at timestamp: Timestamp = .now()) -> UUID {
        shared.withLock { generator in make(at: timestamp, using: &generator) }
    }

    private static let shared = Mutex(Xoshiro256StarStar())

    package static func make<G: RandomNumberGenerator>(at timestamp: Timestamp, using generator: inout G) -> UUID {
        let millis = UInt64(max(timestamp.microseconds / 1_000, 0)) & 0xFFFF_FFFF_FFFF
        let randomA = generator.next() as UInt64
        let randomB = generator.next() as UInt64
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<6 { bytes[index] = UInt8(truncatingIfNeeded: millis >> (8 * (5 - index))) }
        bytes[6] = 0x70 | UInt8(truncatingIfNeeded: randomA & 0x0F)  // version 7
        bytes[7] = UInt8(truncatingIfNeeded: randomA >> 8)
        bytes[8] = 0x80 | UInt8(truncatingIfNeeded: (randomA >> 16) & 0x3F)  // RFC 4122 variant
        for index in 9..<16 { bytes[index] = UInt8(truncatingIfNeeded: randomB >> (8 * (index - 9))) }
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                           bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }

    /// The millisecond timestamp of a UUIDv7, or nil for another version.
    package static func timestamp(of id: UUID) -> Timestamp? {
        let u = id.uuid
        guard u.6 >> 4 == 7 else { return nil }
        let parts = [u.0, u.1, u.2, u.3, u.4, u.5]
        let millis = parts.reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        return Timestamp(microseconds: Int64(millis) * 1_000)
    }
}

/// xoshiro256** (Blackman and Vigna), seeded from `SystemRandomNumberGenerator`.
package struct Xoshiro256StarStar: RandomNumberGenerator, Sendable {
    private var state: (UInt64, UInt64, UInt64, UInt64)

    package init() {
        var system = SystemRandomNumberGenerator()
        repeat {
            state = (system.next(), system.next(), system.next(), system.next())
        } while state == (0, 0, 0, 0)
    }

    package mutating func next() -> UInt64 {
        let result = (state.1 &* 5).rotatedLeft(by: 7) &* 9
        let shifted = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= shifted
        state.3 = state.3.rotatedLeft(by: 45)
        return result
    }
}

extension UInt64 {
    fileprivate func rotatedLeft(by count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
