/* Logging to stderr with a level threshold ("INFO: message").
 * Thread-safe: each message is written with one fprintf under stdio's lock. */
#ifndef FZ_UTIL_LOG_H
#define FZ_UTIL_LOG_H

#include <stdbool.h>

typedef enum {
    FZ_LOG_DEBUG,
    FZ_LOG_INFO,
    FZ_LOG_WARNING,
    FZ_LOG_ERROR,
    FZ_LOG_CRITICAL
} fz_log_level;

void fz_log_set_level(fz_log_level lvl);
fz_log_level fz_log_get_level(void);
/* Parse "DEBUG", "INFO", ... (case-insensitive). Returns 0 or FZ_EUSAGE. */
int fz_log_parse_level(const char *s, fz_log_level *out);
/* Prefix every line with an ISO-8601 UTC timestamp (a daemon's log file). */
void fz_log_set_timestamps(bool on);
void fz_log(fz_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fz_debug(...) fz_log(FZ_LOG_DEBUG, __VA_ARGS__)
#define fz_info(...) fz_log(FZ_LOG_INFO, __VA_ARGS__)
#define fz_warn(...) fz_log(FZ_LOG_WARNING, __VA_ARGS__)

#endif
