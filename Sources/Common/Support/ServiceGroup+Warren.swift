import Logging
import ServiceLifecycle
import UnixSignals

extension ServiceGroup {
    /// A Warren service's group: graceful shutdown on SIGTERM and SIGINT, escalated to task
    /// cancellation after `shutdownWithin` (so no part that ignores shutdown can hold the
    /// process forever), and a fatal error if cancellation itself takes more than 10 s more.
    package static func warren(_ services: [ServiceGroupConfiguration.ServiceConfiguration], shutdownWithin: Duration,
                               logger: Logger) -> ServiceGroup {
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger)
        configuration.maximumGracefulShutdownDuration = shutdownWithin
        configuration.maximumCancellationDuration = .seconds(10)
        return ServiceGroup(configuration: configuration)
    }
}
