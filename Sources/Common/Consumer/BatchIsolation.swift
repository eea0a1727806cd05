/// Finds the items of a batch that a store refuses for their data, writing all the others.
///
/// One outcome Postgres cannot accept (a value out of range, a constraint) must not hold
/// the results around it: the batch is split in halves, each half written, and a refused
/// half split again, down to single items. A batch of n with k refused items takes about
/// 2·k·log2(n) writes. `write` must retry passing faults itself and throw only errors
/// `isDataError` accepts (or one that ends the whole attempt, such as shutdown, which is
/// rethrown); a write is all or nothing, so no item is written twice.
package enum BatchIsolation {
    package static func isolate<Item>(_ items: ArraySlice<Item>,
                                      write: (ArraySlice<Item>) async throws -> Void,
                                      isDataError: (any Error) -> Bool) async throws -> [(item: Item, error: any Error)] {
        guard !items.isEmpty else { return [] }
        do {
            try await write(items)
            return []
        } catch where isDataError(error) {
            guard items.count > 1 else { return [(items[items.startIndex], error)] }
            let middle = items.startIndex + items.count / 2
            let first = try await isolate(items[..<middle], write: write, isDataError: isDataError)
            let second = try await isolate(items[middle...], write: write, isDataError: isDataError)
            return first + second
        }
    }
}
