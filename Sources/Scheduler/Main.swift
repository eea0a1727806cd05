import Foundation

/// `scheduler` arrives with the consumer and scheduler issues; until then it says so and
/// exits non-zero rather than pretending to schedule.
@main
struct SchedulerMain {
    static func main() {
        FileHandle.standardError.write(Data("scheduler: not built yet (partition upkeep and scheduling are later issues)\n".utf8))
        exit(64)
    }
}
