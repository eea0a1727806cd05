#ifndef WARREN_CRABBITMQ_SHIM_H
#define WARREN_CRABBITMQ_SHIM_H

// rabbitmq-c 0.12 moved its headers under rabbitmq-c/; Debian 12 ships 0.11.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#endif

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/time.h>

// Method ids are casts in the header, which Swift does not import: re-export as constants.
static const amqp_method_number_t WARREN_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t WARREN_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t WARREN_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t WARREN_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t WARREN_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const amqp_method_number_t WARREN_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t WARREN_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_method_number_t WARREN_CHANNEL_CLOSE_OK = AMQP_CHANNEL_CLOSE_OK_METHOD;
static const amqp_method_number_t WARREN_CONNECTION_CLOSE_OK = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const amqp_method_number_t WARREN_CONNECTION_BLOCKED = AMQP_CONNECTION_BLOCKED_METHOD;
static const amqp_method_number_t WARREN_CONNECTION_UNBLOCKED = AMQP_CONNECTION_UNBLOCKED_METHOD;

/// amqp_login is variadic, which Swift cannot call. This wrapper logs in with PLAIN and
/// announces the client capabilities Warren relies on (blocked notifications, consumer
/// cancel notifications, publisher confirms), plus a connection name for the management UI.
static inline amqp_rpc_reply_t warren_amqp_login(amqp_connection_state_t state,
                                                 const char *vhost, int channel_max,
                                                 int frame_max, int heartbeat,
                                                 const char *user, const char *password,
                                                 const char *connection_name) {
    amqp_table_entry_t capabilities[4];
    capabilities[0].key = amqp_cstring_bytes("connection.blocked");
    capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[0].value.value.boolean = 1;
    capabilities[1].key = amqp_cstring_bytes("consumer_cancel_notify");
    capabilities[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[1].value.value.boolean = 1;
    capabilities[2].key = amqp_cstring_bytes("publisher_confirms");
    capabilities[2].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[2].value.value.boolean = 1;
    capabilities[3].key = amqp_cstring_bytes("basic.nack");
    capabilities[3].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[3].value.value.boolean = 1;

    amqp_table_entry_t properties[3];
    properties[0].key = amqp_cstring_bytes("capabilities");
    properties[0].value.kind = AMQP_FIELD_KIND_TABLE;
    properties[0].value.value.table.num_entries = 4;
    properties[0].value.value.table.entries = capabilities;
    properties[1].key = amqp_cstring_bytes("connection_name");
    properties[1].value.kind = AMQP_FIELD_KIND_UTF8;
    properties[1].value.value.bytes = amqp_cstring_bytes(connection_name);
    properties[2].key = amqp_cstring_bytes("product");
    properties[2].value.kind = AMQP_FIELD_KIND_UTF8;
    properties[2].value.value.bytes = amqp_cstring_bytes("warren");

    amqp_table_t table;
    table.num_entries = 3;
    table.entries = properties;
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, &table,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}

/// Reads one frame without waiting: returns AMQP_STATUS_TIMEOUT when none is ready.
/// Also services heartbeats (librabbitmq does that inside every read).
static inline int warren_poll_frame(amqp_connection_state_t state, amqp_frame_t *frame) {
    struct timeval zero = {0, 0};
    return amqp_simple_wait_frame_noblock(state, frame, &zero);
}

/// A non-blocking eventfd the connection thread polls beside its socket, so commands posted
/// from async code wake it at once.
static inline int warren_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

static inline void warren_eventfd_signal(int fd) { eventfd_write(fd, 1); }

static inline void warren_eventfd_drain(int fd) {
    eventfd_t value;
    (void)eventfd_read(fd, &value);
}

/// Waits until `socket_fd` is readable or `event_fd` is signalled, up to `timeout_ms`.
/// Returns a bit mask: 1 = socket readable (or error/hang-up), 2 = event; 0 = timeout.
// TCP_CORK around a burst of publishes: librabbitmq writes each frame with its own send(),
// and without the cork every message becomes its own TCP segment (and its own trip through
// the loopback receive path and the broker's reader). Uncorking flushes what is pending.
static inline void warren_set_cork(int socket_fd, int on) {
    setsockopt(socket_fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
}

/// About how many more bytes `socket_fd` takes before a write blocks: half its send buffer
/// (a conservative share of SO_SNDBUF, which also pays for the kernel's bookkeeping) less the
/// bytes still queued in it (TIOCOUTQ: not yet acknowledged by the peer). -1 if unknown.
static inline long warren_send_room(int socket_fd) {
    int queued = 0, size = 0;
    socklen_t length = sizeof size;
    if (ioctl(socket_fd, TIOCOUTQ, &queued) != 0) return -1;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_SNDBUF, &size, &length) != 0) return -1;
    return (long)size / 2 - queued;
}

static inline int warren_wait(int socket_fd, int event_fd, int timeout_ms) {
    struct pollfd fds[2];
    int count = 0;
    if (socket_fd >= 0) {
        fds[count].fd = socket_fd;
        fds[count].events = POLLIN;
        fds[count].revents = 0;
        count++;
    }
    fds[count].fd = event_fd;
    fds[count].events = POLLIN;
    fds[count].revents = 0;
    count++;
    int ready = poll(fds, count, timeout_ms);
    if (ready <= 0) return 0;
    int mask = 0;
    if (socket_fd >= 0 && fds[0].revents != 0) mask |= 1;
    if (fds[count - 1].revents != 0) mask |= 2;
    return mask;
}

#endif
