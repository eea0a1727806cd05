import Foundation

/// `consumer --tier ...` arrives with the tier consumer pools issue; until then it says so
/// and exits non-zero rather than pretending to consume.
@main
struct ConsumerMain {
    static func main() {
        FileHandle.standardError.write(Data("consumer: not built yet (tier consumer pools are the next issue); nothing consumes the queues\n".utf8))
        exit(64)
    }
}
