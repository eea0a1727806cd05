/// Which delivery tags of one consumer channel are still unacknowledged, so a batch of acks
/// can use `multiple` where the tags allow.
///
/// Tags on a channel increase from 1. Acking tag T with `multiple` settles every outstanding
/// tag up to T, so it may stand for a batch exactly when every tag still outstanding below
/// T is in that batch. `settle(_:)` returns the fewest acks that settle exactly the batch:
/// one multiple-ack for the longest such prefix, single acks for the rest.
package struct DeliveryTagTracker: Sendable {
    /// Received tags in order, from `head` on; entries before `head` are settled.
    private var received: [UInt64] = []
    private var head = 0
    /// Tags at or after `head` that were settled out of order.
    private var settledOutOfOrder: Set<UInt64> = []

    package init() {}

    package var outstanding: Int { received.count - head - settledOutOfOrder.count }

    package mutating func receive(_ tag: UInt64) {
        received.append(tag)
    }

    /// Settles `tags` and returns the acks to send: `(tag, multiple)`. Tags that are not
    /// outstanding (unknown, or already settled) are left out: acking them again would close
    /// the channel.
    package mutating func settle(_ tags: some Sequence<UInt64>) -> [(tag: UInt64, multiple: Bool)] {
        var batch = Set(tags)
        var acks: [(tag: UInt64, multiple: Bool)] = []
        // The prefix of outstanding tags that are all in the batch (tags settled earlier are
        // no longer outstanding and do not break it).
        var prefixEnd: UInt64?
        var prefixCount = 0
        while head < received.count {
            let tag = received[head]
            if settledOutOfOrder.remove(tag) != nil {
                head += 1
            } else if batch.remove(tag) != nil {
                prefixEnd = tag
                prefixCount += 1
                head += 1
            } else {
                break
            }
        }
        if let prefixEnd { acks.append((prefixEnd, prefixCount > 1)) }
        // The rest one by one, if they are outstanding.
        if !batch.isEmpty {
            let pending = received[head...]
            for tag in batch.sorted() where !settledOutOfOrder.contains(tag) && Self.contains(pending, tag) {
                settledOutOfOrder.insert(tag)
                acks.append((tag, false))
            }
        }
        compact()
        return acks
    }

    /// Marks every outstanding tag up to `tag` settled (after a `multiple` ack sent as is).
    package mutating func settleAll(upTo tag: UInt64) {
        while head < received.count, received[head] <= tag {
            settledOutOfOrder.remove(received[head])
            head += 1
        }
        compact()
    }

    private static func contains(_ sorted: ArraySlice<UInt64>, _ tag: UInt64) -> Bool {
        var low = sorted.startIndex, high = sorted.endIndex
        while low < high {
            let mid = (low + high) / 2
            if sorted[mid] < tag { low = mid + 1 } else { high = mid }
        }
        return low < sorted.endIndex && sorted[low] == tag
    }

    private mutating func compact() {
        // Drop leading tags that were settled out of order.
        while head < received.count, settledOutOfOrder.remove(received[head]) != nil { head += 1 }
        if head > 4096 && head * 2 > received.count {
            received.removeFirst(head)
            head = 0
        }
    }
}
