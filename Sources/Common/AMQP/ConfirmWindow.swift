/// Publisher-confirm bookkeeping for one channel: sequence numbers from 1, settled by
/// basic.ack / basic.nack with or without `multiple`.
///
/// A plain state machine (no I/O) so the rules are unit-tested alone: `multiple` settles every
/// outstanding number up to and including the tag; a single ack settles one number.
package struct ConfirmWindow<Pending> {
    package private(set) var nextSequence: UInt64 = 1
    /// Sequence number of `slots[head]`.
    private var base: UInt64 = 1
    private var slots: [Pending?] = []
    private var head = 0
    package private(set) var outstanding = 0

    package init() {}

    /// Records a publish; returns its sequence number.
    package mutating func append(_ pending: Pending) -> UInt64 {
        let sequence = nextSequence
        nextSequence += 1
        slots.append(pending)
        outstanding += 1
        return sequence
    }

    /// Settles `tag` (and, with `multiple`, everything before it). Returns what was settled,
    /// in sequence order. Unknown or already-settled tags are ignored.
    package mutating func settle(tag: UInt64, multiple: Bool) -> [(sequence: UInt64, pending: Pending)] {
        guard tag >= base, tag < nextSequence else { return [] }
        var settled: [(sequence: UInt64, pending: Pending)] = []
        let lower = multiple ? base : tag
        for sequence in lower...tag {
            let index = head + Int(sequence - base)
            if let pending = slots[index] {
                settled.append((sequence, pending))
                slots[index] = nil
                outstanding -= 1
            }
        }
        compact()
        return settled
    }

    /// Removes and returns everything outstanding (the channel is gone), and restarts at 1.
    package mutating func reset() -> [Pending] {
        let remaining = slots[head...].compactMap { $0 }
        self = ConfirmWindow()
        return remaining
    }

    /// The pending value for `sequence`, if still outstanding.
    package func pending(_ sequence: UInt64) -> Pending? {
        guard sequence >= base, sequence < nextSequence else { return nil }
        return slots[head + Int(sequence - base)]
    }

    private mutating func compact() {
        while head < slots.count, slots[head] == nil {
            head += 1
            base += 1
        }
        if head > 1024, head * 2 > slots.count {
            slots.removeFirst(head)
            head = 0
        }
    }
}
