/*
 * sonde/pb.h - the little of protocol buffers the gRPC prober needs, with
 * no protobuf library: varints, a length-delimited string field encoded,
 * a varint field decoded, every other field skipped.
 *
 * Wire format (protobuf encoding guide): a message is a sequence of
 * records `key value`; key = varint (field_number << 3 | wire_type);
 * wire types 0 varint, 1 fixed 8 bytes, 2 varint length + bytes, 3 start
 * group, 4 end group, 5 fixed 4 bytes (6 and 7 do not exist).  A varint is
 * 1 to 10 bytes, 7 bits each, least significant first, the high bit set
 * on every byte but the last; the 10th byte may only hold the 64th bit.
 *
 * The decoder refuses, with an error (never reading past the buffer):
 *   - a varint cut short by the end of the buffer ("truncated varint");
 *   - a varint of more than 10 bytes, or whose 10th byte is over 1
 *     ("varint overflows 64 bits");
 *   - a length or fixed-size value reaching past the end ("length beyond
 *     the end of the message");
 *   - wire types 6 and 7 ("invalid wire type 6"), an end group without
 *     its start or a group not ended ("unbalanced group");
 *   - field number 0 or over 2^29 - 1 ("invalid field number");
 *   - the wanted field with another wire type than varint ("wanted field
 *     has wire type 2 (length-delimited), expected 0 (varint)").  (Go's
 * protobuf would keep such a record as an unknown field and leave the field at
 * its default; for a health check both end in a failure: sonde says why.) Other
 * fields of any valid wire type are skipped (groups with what they hold, nested
 * up to 64 deep).  A repeated field: the last value wins, as in protobuf.
 */
#ifndef SONDE_PB_H
#define SONDE_PB_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes a varint takes. */
#define SONDE_PB_VARINT_MAX 10

/* Write v as a varint into out (room for SONDE_PB_VARINT_MAX bytes);
 * returns the bytes written (1..10). */
size_t sonde_pb_put_varint(uint8_t *out, uint64_t v);

/* Read a varint from p (n bytes available) into *v; *used = its bytes.
 * Returns NULL, or a static error text (nothing is set then). */
const char *sonde_pb_get_varint(const uint8_t *p, size_t n, uint64_t *v,
                                size_t *used);

/* Encode a message holding one string (or bytes) field `field` (1 ..
 * 2^29 - 1): key, length, bytes.  protobuf 3 leaves a field at its default
 * ("") out: len 0 gives an empty message.  Returns a malloc'd buffer
 * (*out_len bytes; not NUL-terminated), or NULL when out of memory or the
 * field number is invalid. */
uint8_t *sonde_pb_encode_string(uint32_t field, const char *s, size_t len,
                                size_t *out_len);

/* Decode varint field `field` of the message p[0..n): *v = its last value
 * and *found = 1, or *found = 0 and *v = 0 when the message does not hold
 * it (protobuf 3: the default).  Returns NULL, or a static error text
 * describing the first malformed record (see above). */
const char *sonde_pb_decode_varint(const uint8_t *p, size_t n, uint32_t field,
                                   uint64_t *v, int *found);

#endif
