import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Answers a request NIO could not parse (a header over the decoder's limit, such as a 100 KB
/// `Authorization`, a path too long for it, a malformed request line) with the API's JSON
/// error body, then closes the connection. Hummingbird's own answer to these is a bare 400
/// with an empty body, which clients cannot tell from a proxy's.
///
/// Sits in the HTTP/1 pipeline after the codec (`HTTP1Channel.Configuration`'s additional
/// handlers). It answers only between requests: a parse error while a request is being
/// served goes on to Hummingbird, which ends that connection its own way.
package final class ProtocolErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = HTTPRequestPart
    package typealias InboundOut = HTTPRequestPart
    package typealias OutboundIn = HTTPResponsePart
    package typealias OutboundOut = HTTPResponsePart

    /// Request heads read whose response has not ended yet.
    private var inFlight = 0
    private var answered = false

    package init() {}

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { inFlight += 1 }
        context.fireChannelRead(data)
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { inFlight -= 1 }
        context.write(data, promise: promise)
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parseError = error as? HTTPParserError, inFlight == 0, !answered else {
            context.fireErrorCaught(error)
            return
        }
        answered = true
        let error = Self.apiError(parseError)
        var body = context.channel.allocator.buffer(capacity: 160)
        body.writeString(error.json)
        let head = HTTPResponse(status: error.status, headerFields: [
            .contentType: "application/json", .contentLength: String(body.readableBytes), .connection: "close",
        ])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// The answer to each kind of unparsable request: 431 for headers over the limit, 400 otherwise.
    static func apiError(_ error: HTTPParserError) -> APIError {
        switch error {
        case .headerOverflow:
            APIError(.init(code: 431, reasonPhrase: "Request Header Fields Too Large"), "headers_too_large",
                     "the request line and headers are larger than the server accepts (80 KiB)")
        case .invalidURL:
            APIError(.badRequest, "bad_request", "the request's path is not a valid URL")
        default:
            APIError(.badRequest, "bad_request", "the request is not valid HTTP/1.1 (\(error))")
        }
    }
}
