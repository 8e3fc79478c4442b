#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>

#include "util/error.h"

static fz_log_level fz_level = FZ_LOG_INFO;
static bool fz_stamps;
static const char *const fz_level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"};

void fz_log_set_timestamps(bool on)
{
    fz_stamps = on;
}

void fz_log_set_level(fz_log_level lvl)
{
    fz_level = lvl;
}

fz_log_level fz_log_get_level(void)
{
    return fz_level;
}

int fz_log_parse_level(const char *s, fz_log_level *out)
{
    for (int i = 0; i <= FZ_LOG_CRITICAL; i++)
        if (strcasecmp(s, fz_level_names[i]) == 0) {
            *out = (fz_log_level)i;
            return 0;
        }
    return fz_error_set(
        FZ_EUSAGE, "--log-level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got '%s'", s);
}

void fz_log(fz_log_level lvl, const char *fmt, ...)
{
    if (lvl < fz_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char stamp[40] = "";
    if (fz_stamps) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(stamp + n, sizeof stamp - n, ".%03ldZ ", ts.tv_nsec / 1000000);
    }
    fprintf(stderr, "%s%s: %s\n", stamp, fz_level_names[lvl], msg);
}
