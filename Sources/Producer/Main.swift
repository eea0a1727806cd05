import ArgumentParser

/// `producer`: publish jobs to Warren from scripts (and, later, serve the HTTP API).
@main
struct ProducerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producer",
        abstract: "Publish jobs to Warren.",
        subcommands: [PublishCommand.self])
}
