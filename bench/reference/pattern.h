/* The byte pattern both C clients send and check: PERIOD pseudo-random bytes (an
 * LCG from seed 862, the RFC's number), stored twice so that any slice up to PERIOD
 * bytes long is contiguous. */
#ifndef ECHOD_PATTERN_H
#define ECHOD_PATTERN_H

#include <stdint.h>
#include <stdlib.h>

#define PERIOD 65537u

static unsigned char *make_pattern(void) {
    unsigned char *block = malloc(2 * PERIOD);
    uint32_t x = 862;
    for (size_t i = 0; i < PERIOD; i++) {
        x = x * 1103515245u + 12345u;
        block[i] = block[i + PERIOD] = (unsigned char)(x >> 16);
    }
    return block;
}

#endif
