/*
 * The benchmark's yardstick: a plain librabbitmq loop that publishes COUNT
 * persistent, mandatory messages to warren.jobs with publisher confirms and a
 * window of WINDOW unconfirmed messages, spread round-robin over the three
 * tiers. Messages carry the same properties and x-warren-* headers that
 * `producer publish` sends, so both put the same bytes on the wire.
 *
 *   publish_ref HOST PORT USER PASS COUNT [WINDOW]
 *
 * Prints one line: "published=N nacked=N returned=N seconds=S rate=R".
 * Exits non-zero if any message was nacked or returned, or on a broker error.
 */
/* rabbitmq-c 0.12 moved its headers under rabbitmq-c/; Debian 12 ships 0.11. */
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#endif

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die_reply(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return;
    fprintf(stderr, "publish_ref: %s failed (reply type %d, library error %s)\n", what, r.reply_type,
            r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error) : "-");
    exit(2);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct counts {
    uint64_t confirmed; /* highest delivery tag settled, all below it too */
    uint64_t nacked;
    uint64_t returned;
};

/* Blocks for one frame and accounts for confirms and returns. */
static void read_one(amqp_connection_state_t conn, struct counts *c) {
    amqp_frame_t frame;
    int status = amqp_simple_wait_frame(conn, &frame);
    if (status != AMQP_STATUS_OK) {
        fprintf(stderr, "publish_ref: wait_frame: %s\n", amqp_error_string2(status));
        exit(2);
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) return; /* body/header of a return */
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *ack = frame.payload.method.decoded;
        c->confirmed = ack->delivery_tag; /* single or multiple: both settle up to here (in order) */
        break;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *nack = frame.payload.method.decoded;
        c->nacked += nack->multiple ? nack->delivery_tag - c->confirmed : 1;
        c->confirmed = nack->delivery_tag;
        break;
    }
    case AMQP_BASIC_RETURN_METHOD:
        c->returned += 1;
        break;
    default:
        fprintf(stderr, "publish_ref: unexpected method 0x%08x\n", frame.payload.method.id);
        exit(2);
    }
    amqp_maybe_release_buffers(conn);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: publish_ref HOST PORT USER PASS COUNT [WINDOW]\n");
        return 64;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    uint64_t count = strtoull(argv[5], NULL, 10);
    uint64_t window = argc > 6 ? strtoull(argv[6], NULL, 10) : 1024;

    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) {
        fprintf(stderr, "publish_ref: cannot connect to %s:%d\n", host, port);
        return 2;
    }
    die_reply(amqp_login(conn, "/", 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, argv[3], argv[4]), "login");
    amqp_channel_open(conn, 1);
    die_reply(amqp_get_rpc_reply(conn), "channel.open");
    amqp_confirm_select(conn, 1);
    die_reply(amqp_get_rpc_reply(conn), "confirm.select");

    static const char *tiers[] = {"enterprise", "premium", "free"};
    const char *body = "{\"i\":12345}";
    char message_id[64];
    struct counts c = {0, 0, 0};

    amqp_table_entry_t headers[3];
    headers[0].key = amqp_cstring_bytes("x-warren-tier");
    headers[0].value.kind = AMQP_FIELD_KIND_UTF8;
    headers[1].key = amqp_cstring_bytes("x-warren-attempt");
    headers[1].value.kind = AMQP_FIELD_KIND_I64;
    headers[1].value.value.i64 = 1;
    headers[2].key = amqp_cstring_bytes("x-warren-enqueued-at");
    headers[2].value.kind = AMQP_FIELD_KIND_UTF8;
    headers[2].value.value.bytes = amqp_cstring_bytes("2026-11-23T09:00:00.000000Z");

    double start = now_seconds();
    for (uint64_t tag = 1; tag <= count; tag++) {
        while (tag - 1 - c.confirmed >= window) read_one(conn, &c);

        const char *tier = tiers[tag % 3];
        snprintf(message_id, sizeof message_id, "0190f0e0-0000-7000-8000-%012" PRIu64, tag);
        headers[0].value.value.bytes = amqp_cstring_bytes(tier);

        amqp_basic_properties_t props;
        memset(&props, 0, sizeof props);
        props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                       AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG;
        props.content_type = amqp_cstring_bytes("application/json");
        props.delivery_mode = 2;
        props.message_id = amqp_cstring_bytes(message_id);
        props.timestamp = (uint64_t)time(NULL);
        props.type = amqp_cstring_bytes("noop");
        props.headers.num_entries = 3;
        props.headers.entries = headers;

        int status = amqp_basic_publish(conn, 1, amqp_cstring_bytes("warren.jobs"), amqp_cstring_bytes(tier), 1, 0,
                                        &props, amqp_cstring_bytes(body));
        if (status != AMQP_STATUS_OK) {
            fprintf(stderr, "publish_ref: basic_publish: %s\n", amqp_error_string2(status));
            return 2;
        }
        /* Take whatever confirms already arrived without blocking. */
        while (amqp_data_in_buffer(conn) || amqp_frames_enqueued(conn)) read_one(conn, &c);
    }
    while (c.confirmed < count) read_one(conn, &c);
    double seconds = now_seconds() - start;

    printf("published=%" PRIu64 " nacked=%" PRIu64 " returned=%" PRIu64 " seconds=%.3f rate=%.0f\n",
           count - c.nacked - c.returned, c.nacked, c.returned, seconds, (double)count / seconds);
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return (c.nacked || c.returned) ? 1 : 0;
}
