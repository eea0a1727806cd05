import ArgumentParser

/// `producer`: publish jobs to Warren from scripts, serve the HTTP API, manage API tokens.
@main
struct ProducerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producer",
        abstract: "Publish jobs to Warren, from scripts or over HTTP.",
        subcommands: [PublishCommand.self, ServeCommand.self, TokensCommand.self, DeadCommand.self, RoutesCommand.self])
}
