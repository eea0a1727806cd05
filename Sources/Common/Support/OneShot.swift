/// A value produced once by one task and awaited by another, where the wait can be
/// cancelled (awaiting a `Task`'s `value` cannot: it lasts as long as the task).
package final class OneShot<Value: Sendable>: Sendable {
    private let lot = ParkingLot<Value?, Void, Value?>(nil)

    package init() {}

    /// Sets the value (the first call wins) and wakes every waiter.
    package func fulfil(_ value: Value) {
        var first = false
        lot.resume(updating: { state in
            if state == nil {
                state = value
                first = true
            }
        }) { _, state in first ? state : nil }
    }

    /// The value once it is set, or nil as soon as the calling task is cancelled.
    package func wait() async -> Value? {
        await lot.park((), cancelled: nil) { state in state.map { .some($0) } }
    }
}
