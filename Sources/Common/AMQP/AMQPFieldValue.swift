import CRabbitMQ
import Foundation

/// A value in an AMQP field table (message headers, queue arguments).
package enum AMQPFieldValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    case timestamp(UInt64)
    case bytes([UInt8])
    case table(AMQPTable)
    case array([AMQPFieldValue])
    case void

    package var stringValue: String? {
        switch self {
        case .string(let value): return value
        case .bytes(let value): return String(decoding: value, as: UTF8.self)
        default: return nil
        }
    }

    package var intValue: Int64? {
        switch self {
        case .int(let value): return value
        case .timestamp(let value): return Int64(exactly: value)
        case .string(let value): return Int64(value)
        default: return nil
        }
    }
}

/// An ordered AMQP field table. Order is kept because the wire format keeps it.
package struct AMQPTable: Sendable, Hashable, ExpressibleByDictionaryLiteral {
    package var entries: [(key: String, value: AMQPFieldValue)]

    package init(_ entries: [(key: String, value: AMQPFieldValue)] = []) { self.entries = entries }

    package init(dictionaryLiteral elements: (String, AMQPFieldValue)...) {
        entries = elements.map { (key: $0.0, value: $0.1) }
    }

    package subscript(key: String) -> AMQPFieldValue? {
        get { entries.first { $0.key == key }?.value }
        set {
            if let index = entries.firstIndex(where: { $0.key == key }) {
                if let newValue { entries[index].value = newValue } else { entries.remove(at: index) }
            } else if let newValue {
                entries.append((key: key, value: newValue))
            }
        }
    }

    package var isEmpty: Bool { entries.isEmpty }

    /// Order-insensitive view, for comparisons.
    package var dictionary: [String: AMQPFieldValue] {
        Dictionary(entries.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
    }

    package static func == (lhs: AMQPTable, rhs: AMQPTable) -> Bool {
        lhs.entries.count == rhs.entries.count && zip(lhs.entries, rhs.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    package func hash(into hasher: inout Hasher) {
        for entry in entries {
            hasher.combine(entry.key)
            hasher.combine(entry.value)
        }
    }
}

// MARK: - C conversion

extension AMQPTable {
    /// Copies a C table into Swift storage (the C memory belongs to the connection's pool).
    init(copying table: amqp_table_t) {
        var entries: [(key: String, value: AMQPFieldValue)] = []
        entries.reserveCapacity(Int(table.num_entries))
        for index in 0..<Int(table.num_entries) {
            let entry = table.entries[index]
            entries.append((key: String(amqpBytes: entry.key), value: AMQPFieldValue(copying: entry.value)))
        }
        self.entries = entries
    }
}

extension AMQPFieldValue {
    init(copying value: amqp_field_value_t) {
        switch value.kind {
        case UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue): self = .bool(value.value.boolean != 0)
        case UInt8(AMQP_FIELD_KIND_I8.rawValue): self = .int(Int64(value.value.i8))
        case UInt8(AMQP_FIELD_KIND_U8.rawValue): self = .int(Int64(value.value.u8))
        case UInt8(AMQP_FIELD_KIND_I16.rawValue): self = .int(Int64(value.value.i16))
        case UInt8(AMQP_FIELD_KIND_U16.rawValue): self = .int(Int64(value.value.u16))
        case UInt8(AMQP_FIELD_KIND_I32.rawValue): self = .int(Int64(value.value.i32))
        case UInt8(AMQP_FIELD_KIND_U32.rawValue): self = .int(Int64(value.value.u32))
        case UInt8(AMQP_FIELD_KIND_I64.rawValue): self = .int(value.value.i64)
        case UInt8(AMQP_FIELD_KIND_U64.rawValue): self = .int(Int64(truncatingIfNeeded: value.value.u64))
        case UInt8(AMQP_FIELD_KIND_F32.rawValue): self = .double(Double(value.value.f32))
        case UInt8(AMQP_FIELD_KIND_F64.rawValue): self = .double(value.value.f64)
        case UInt8(AMQP_FIELD_KIND_UTF8.rawValue): self = .string(String(amqpBytes: value.value.bytes))
        case UInt8(AMQP_FIELD_KIND_BYTES.rawValue): self = .bytes([UInt8](amqpBytes: value.value.bytes))
        case UInt8(AMQP_FIELD_KIND_TIMESTAMP.rawValue): self = .timestamp(value.value.u64)
        case UInt8(AMQP_FIELD_KIND_TABLE.rawValue): self = .table(AMQPTable(copying: value.value.table))
        case UInt8(AMQP_FIELD_KIND_ARRAY.rawValue):
            let array = value.value.array
            self = .array((0..<Int(array.num_entries)).map { AMQPFieldValue(copying: array.entries[$0]) })
        default: self = .void
        }
    }
}

extension String {
    init(amqpBytes bytes: amqp_bytes_t) {
        guard bytes.len > 0, let base = bytes.bytes else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    init(amqpBytes bytes: amqp_bytes_t) {
        guard bytes.len > 0, let base = bytes.bytes else {
            self = []
            return
        }
        self = Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }
}

/// C memory for one outgoing frame's strings and tables, freed together.
///
/// librabbitmq reads `amqp_bytes_t` and tables only during the call, so everything a publish
/// or declare needs is copied here and released right after the call returns.
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    deinit {
        for block in blocks { free(block) }
    }

    func bytes(_ string: String) -> amqp_bytes_t {
        var copy = string
        return copy.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    func bytes(_ buffer: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard buffer.count > 0, let base = buffer.baseAddress else { return amqp_bytes_t(len: 0, bytes: nil) }
        let block = malloc(buffer.count)!
        block.copyMemory(from: base, byteCount: buffer.count)
        blocks.append(block)
        return amqp_bytes_t(len: buffer.count, bytes: block)
    }

    func bytes(_ array: [UInt8]) -> amqp_bytes_t {
        array.withUnsafeBytes { bytes($0) }
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let size = MemoryLayout<amqp_table_entry_t>.stride * table.entries.count
        let raw = malloc(size)!
        blocks.append(raw)
        let entries = raw.bindMemory(to: amqp_table_entry_t.self, capacity: table.entries.count)
        for (index, entry) in table.entries.enumerated() {
            entries[index] = amqp_table_entry_t(key: bytes(entry.key), value: field(entry.value))
        }
        return amqp_table_t(num_entries: Int32(table.entries.count), entries: entries)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        switch value {
        case .string(let string):
            field.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            field.value.bytes = bytes(string)
        case .int(let int):
            field.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            field.value.i64 = int
        case .bool(let bool):
            field.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            field.value.boolean = bool ? 1 : 0
        case .double(let double):
            field.kind = UInt8(AMQP_FIELD_KIND_F64.rawValue)
            field.value.f64 = double
        case .timestamp(let stamp):
            field.kind = UInt8(AMQP_FIELD_KIND_TIMESTAMP.rawValue)
            field.value.u64 = stamp
        case .bytes(let data):
            field.kind = UInt8(AMQP_FIELD_KIND_BYTES.rawValue)
            field.value.bytes = bytes(data)
        case .table(let nested):
            field.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            field.value.table = table(nested)
        case .array(let values):
            field.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            let raw = malloc(max(1, MemoryLayout<amqp_field_value_t>.stride * values.count))!
            blocks.append(raw)
            let items = raw.bindMemory(to: amqp_field_value_t.self, capacity: values.count)
            for (index, item) in values.enumerated() { items[index] = self.field(item) }
            field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: items)
        case .void:
            field.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return field
    }
}
