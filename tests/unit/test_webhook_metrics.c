/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for the webhook's Prometheus metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "controller_int.h"

/* Value of the sample whose name-and-labels part is exactly series; fails if absent. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        cr_assert_not_null(eol, "every line ends in a newline");
        if (line[0] != '#' && strncmp(line, series, n) == 0 && line[n] == ' ') {
            return strtod(line + n + 1, NULL);
        }
        line = eol + 1;
    }
    cr_assert_fail("no sample %s in\n%s", series, text);
    return -1;
}

Test(metrics, counts_results_patches_and_latency)
{
    kvsc_metrics_t *m;
    cr_assert_eq(kvsc_metrics_create(&m), KVSC_OK);
    kvsc_metrics_observe(m, KVSC_RESULT_PATCHED, 80000, 12);   /* 80 us */
    kvsc_metrics_observe(m, KVSC_RESULT_PATCHED, 3000000, 10); /* 3 ms */
    kvsc_metrics_observe(m, KVSC_RESULT_DRY_RUN, 90000, 12);
    kvsc_metrics_observe(m, KVSC_RESULT_BAD_REQUEST, 20000, 0);
    kvsc_metrics_observe(m, KVSC_RESULT_NOT_FOUND, 1000, 0);
    kvsc_metrics_observe(m, KVSC_RESULT_PATCHED, 20000000000ULL, 1); /* beyond the last bucket */
    kvsc_metrics_cert_reload(m, 1);
    kvsc_metrics_cert_reload(m, 0);
    kvsc_metrics_cert_reload(m, 0);
    size_t len;
    char *text = kvsc_metrics_render(m, "1.2.3", &len);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len);
    cr_assert_eq(sample(text, "kvshare_webhook_requests_total{result=\"patched\"}"), 3);
    cr_assert_eq(sample(text, "kvshare_webhook_requests_total{result=\"dry_run\"}"), 1);
    cr_assert_eq(sample(text, "kvshare_webhook_requests_total{result=\"bad_request\"}"), 1);
    cr_assert_eq(sample(text, "kvshare_webhook_requests_total{result=\"not_found\"}"), 1);
    cr_assert_eq(sample(text, "kvshare_webhook_requests_total{result=\"no_patch\"}"), 0);
    /* Dry runs are not emitted patches. */
    cr_assert_eq(sample(text, "kvshare_webhook_patches_total"), 3);
    cr_assert_eq(sample(text, "kvshare_webhook_patch_operations_total"), 23);
    /* Histogram: 404s stay out; buckets cumulative; +Inf equals count. */
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_count"), 5);
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_bucket{le=\"5e-05\"}"), 1);
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_bucket{le=\"0.0001\"}"), 3);
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_bucket{le=\"0.005\"}"), 4);
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_bucket{le=\"10\"}"), 4);
    cr_assert_eq(sample(text, "kvshare_webhook_review_duration_seconds_bucket{le=\"+Inf\"}"), 5);
    double sum = sample(text, "kvshare_webhook_review_duration_seconds_sum");
    cr_assert_float_eq(sum, 20.00319, 1e-6);
    cr_assert_eq(sample(text, "kvshare_webhook_cert_reloads_total{result=\"ok\"}"), 1);
    cr_assert_eq(sample(text, "kvshare_webhook_cert_reloads_total{result=\"failed\"}"), 2);
    cr_assert_eq(sample(text, "kvshare_webhook_build_info{version=\"1.2.3\"}"), 1);
    free(text);
    kvsc_metrics_destroy(m);
}

Test(metrics, every_result_has_a_name)
{
    for (int i = 0; i < KVSC_RESULT_COUNT; i++) {
        cr_assert_str_neq(kvsc_result_name((kvsc_result_t)i), "unknown");
    }
    cr_assert_str_eq(kvsc_result_name(KVSC_RESULT_COUNT), "unknown");
    kvsc_metrics_destroy(NULL);
}
