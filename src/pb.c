/*
 * pb.c - protobuf varints and the two records the gRPC health check needs
 * (include/sonde/pb.h).  Every read is bounded by the buffer's length.
 */
#include <stdlib.h>
#include <string.h>

#include "sonde/pb.h"

#define FIELD_MAX ((1u << 29) - 1)
#define GROUP_DEPTH_MAX 64

size_t sonde_pb_put_varint(uint8_t *out, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

const char *sonde_pb_get_varint(const uint8_t *p, size_t n, uint64_t *v,
                                size_t *used) {
  uint64_t x = 0;
  for (size_t i = 0; i < SONDE_PB_VARINT_MAX; i++) {
    if (i >= n) return "truncated varint";
    uint8_t b = p[i];
    /* the 10th byte holds bit 63 only */
    if (i == SONDE_PB_VARINT_MAX - 1 && b > 1)
      return "varint overflows 64 bits";
    x |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *v = x;
      *used = i + 1;
      return NULL;
    }
  }
  return "varint overflows 64 bits"; /* (unreachable: the 10th byte <= 1) */
}

uint8_t *sonde_pb_encode_string(uint32_t field, const char *s, size_t len,
                                size_t *out_len) {
  if (field == 0 || field > FIELD_MAX) return NULL;
  uint8_t *out = malloc(2 * SONDE_PB_VARINT_MAX + len + 1);
  if (!out) return NULL;
  size_t n = 0;
  if (len > 0) {
    n += sonde_pb_put_varint(out, (uint64_t)field << 3 | 2);
    n += sonde_pb_put_varint(out + n, len);
    memcpy(out + n, s, len);
    n += len;
  }
  *out_len = n;
  return out;
}

static const char *const WRONG_TYPE[] = {
    NULL,
    "wanted field has wire type 1 (64-bit), expected 0 (varint)",
    "wanted field has wire type 2 (length-delimited), expected 0 (varint)",
    "wanted field has wire type 3 (group), expected 0 (varint)",
    "wanted field has wire type 4 (end group), expected 0 (varint)",
    "wanted field has wire type 5 (32-bit), expected 0 (varint)",
};

const char *sonde_pb_decode_varint(const uint8_t *p, size_t n, uint32_t field,
                                   uint64_t *v, int *found) {
  size_t i = 0;
  uint64_t groups[GROUP_DEPTH_MAX]; /* field numbers of open groups */
  int depth = 0;
  uint64_t value = 0;
  int have = 0;
  while (i < n) {
    uint64_t key, x;
    size_t used;
    const char *err = sonde_pb_get_varint(p + i, n - i, &key, &used);
    if (err) return err;
    i += used;
    uint64_t num = key >> 3;
    unsigned wt = (unsigned)(key & 7);
    if (wt == 6) return "invalid wire type 6";
    if (wt == 7) return "invalid wire type 7";
    if (num == 0 || num > FIELD_MAX) return "invalid field number";
    if (depth == 0 && num == field && wt != 0) return WRONG_TYPE[wt];
    switch (wt) {
    case 0:
      err = sonde_pb_get_varint(p + i, n - i, &x, &used);
      if (err) return err;
      i += used;
      if (depth == 0 && num == field) {
        value = x;
        have = 1;
      }
      break;
    case 1:
    case 5: {
      size_t size = wt == 1 ? 8 : 4;
      if (n - i < size) return "length beyond the end of the message";
      i += size;
      break;
    }
    case 2:
      err = sonde_pb_get_varint(p + i, n - i, &x, &used);
      if (err) return err;
      i += used;
      if (x > n - i) return "length beyond the end of the message";
      i += (size_t)x;
      break;
    case 3:
      if (depth == GROUP_DEPTH_MAX) return "groups nested too deep";
      groups[depth++] = num;
      break;
    case 4:
      if (depth == 0 || groups[depth - 1] != num) return "unbalanced group";
      depth--;
      break;
    }
  }
  if (depth != 0) return "unbalanced group";
  *v = value;
  *found = have;
  return NULL;
}
