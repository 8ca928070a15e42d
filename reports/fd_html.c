/* fd_html.c: report.html with gnuplot plots; see fd_html.h. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fd_diff_out.h"
#include "fd_html.h"
#include "fd_out.h"

#define MAX_SERIES 24
#define MAX_POINTS 256

typedef struct {
    char name[96];
    int n;
    double x[MAX_POINTS], y[MAX_POINTS];
} series;

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* The cases of report by id (a new object; NULL when out of memory): every case of one
 * report is looked up in the other once, not by a scan. */
static json_t *case_index(const json_t *report)
{
    json_t *idx = json_object();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c)
        if (idx && !json_object_get(idx, str(c, "id"))) json_object_set(idx, str(c, "id"), c);
    return idx;
}

static void html_esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A text field of a gnuplot data file, in double quotes. Gnuplot reads such a field as
 * plain text (`title columnheader`, `xtic(1)`): no escapes, no backquote or macro
 * substitution (checked with gnuplot 5.4.4, tests/test_html.c). It ends at the next '"' and
 * a newline ends the record, so those and every byte outside printable ASCII become '?'
 * (which also keeps a truncated UTF-8 sequence out of the SVG). */
static void dat_str(FILE *f, const char *s)
{
    fputc('"', f);
    if (!*s) fputs("(empty)", f);
    for (; *s; s++) fputc(*s >= 0x20 && *s < 0x7f && *s != '"' ? *s : '?', f);
    fputc('"', f);
}

/* A number for the gnuplot program: finite, else gnuplot reads "inf" or "nan" as an
 * undefined variable and the page is lost (ranges computed from a crafted report). */
static double gp_num(double v)
{
    return isnan(v) ? 0.0 : v > 1e300 ? 1e300 : v < -1e300 ? -1e300 : v;
}

/* The verdict as a span (or td) whose class is the verdict only when it is one of ours. */
static void verdict_el(FILE *f, const char *tag, const char *v)
{
    static const char *const known[] = {"PASS", "MARGINAL", "FAIL", "UNDECIDED", NULL};
    const char *cls = "";
    for (int k = 0; known[k]; k++)
        if (!strcmp(v, known[k])) cls = known[k];
    fprintf(f, "<%s class=\"%s\">", tag, cls);
    html_esc(f, v);
    fprintf(f, "</%s>", tag);
}

static series *find_series(series *s, int *ns, const char *name)
{
    for (int i = 0; i < *ns; i++)
        if (!strcmp(s[i].name, name)) return &s[i];
    if (*ns == MAX_SERIES) return NULL;
    series *n = &s[(*ns)++];
    memset(n, 0, sizeof *n);
    snprintf(n->name, sizeof n->name, "%s", name);
    return n;
}

/* Keeps the largest y per x (the worst case at that sequence length). */
static void add_point_max(series *s, double x, double y)
{
    for (int i = 0; i < s->n; i++)
        if (!(s->x[i] < x || s->x[i] > x)) {
            if (y > s->y[i]) s->y[i] = y;
            return;
        }
    if (s->n < MAX_POINTS) {
        s->x[s->n] = x;
        s->y[s->n++] = y;
    }
}

static int cmp_dbl(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void sort_series(series *s)
{
    /* insertion sort by x, n is small */
    for (int i = 1; i < s->n; i++)
        for (int j = i; j > 0 && s->x[j - 1] > s->x[j]; j--) {
            double tx = s->x[j], ty = s->y[j];
            s->x[j] = s->x[j - 1]; s->y[j] = s->y[j - 1];
            s->x[j - 1] = tx; s->y[j - 1] = ty;
        }
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 > cap) {
            cap = cap ? 2 * cap : 262144;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static void base64(FILE *f, const unsigned char *p, size_t n)
{
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        const unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0u) | (i + 2 < n ? p[i + 2] : 0u);
        fputc(tb[v >> 18 & 63], f);
        fputc(tb[v >> 12 & 63], f);
        fputc(i + 1 < n ? tb[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? tb[v & 63] : '=', f);
    }
}

/* Runs gnuplot on script in dir; 0 ok, 1 not found, -1 failed (err holds its log). */
static int run_gnuplot(const char *dir, char *err, size_t errlen)
{
    const char *gp = getenv("FD_GNUPLOT");
    if (!gp || !*gp) gp = "gnuplot";
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "cannot start gnuplot: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        if (chdir(dir)) _exit(126);
        int fd = open("gnuplot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp(gp, gp, "plots.gp", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
        snprintf(err, errlen, "gnuplot not found (%s; install the Debian package gnuplot-nox)", gp);
        return 1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char lp[4200];
        size_t n = 0;
        snprintf(lp, sizeof lp, "%s/gnuplot.log", dir);
        char *log = slurp(lp, &n);
        snprintf(err, errlen, "gnuplot failed: %.*s", (int)(n > 300 ? 300 : n), log ? log : "");
        free(log);
        return -1;
    }
    return 0;
}

static const char *const plot_files[] = {"seq.svg", "ulp.svg", "keep.svg", "base.svg", "expl.svg", "grad.svg",
                                         "seq.dat", "ulp.dat", "keep.dat", "base.dat", "expl.dat", "grad.dat",
                                         "plots.gp", "gnuplot.log", NULL};

static void cleanup(const char *dir)
{
    char p[4200];
    for (int i = 0; plot_files[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, plot_files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static FILE *open_in(const char *dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return fopen(p, "w");
}

/* Starts one plot of plots.gp. Each plot begins with `reset`, so that no setting of an
 * earlier plot leaks into it (a baseline plot's `set logscale xy` once broke the stacked
 * bars after it). The program text is fixed: every input string reaches gnuplot through a
 * data file (dat_str), never through the script. */
static void plot_head(FILE *gp, int height, const char *svg)
{
    fprintf(gp, "reset\nset terminal svg size 760,%d dynamic noenhanced font 'sans,11' background rgb 'white'\n"
                "set output '%s'\n", height, svg);
}

/* --- explanations (run --explain, or an explain.json) ---------------------------------- */

/* One explained case: its explain object (docs/attribution.md) or the error instead. */
typedef struct {
    const char *id, *verdict; /* verdict: NULL for an explain.json */
    const json_t *ex;
    const char *error;
} ex_item;

#define MAX_STAGES 12
#define MAX_EX_BARS 400

/* The explained cases of a report (n capped at cap). */
static int report_ex_items(const json_t *report, ex_item *it, int cap)
{
    int n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const json_t *ex = json_object_get(c, "explain");
        const char *xe = json_string_value(json_object_get(c, "explain_error"));
        if ((!json_is_object(ex) && !xe) || n == cap) continue;
        it[n++] = (ex_item){str(c, "id"), str(c, "verdict"), json_is_object(ex) ? ex : NULL, xe};
    }
    return n;
}

/* The stacked bars of the stage shares: data file and script. 1 plotted, 0 nothing to
 * plot, -1 error. The stage names head the columns of expl.dat (the key's titles), the case
 * labels are its first column; common gets the part of the ids cut from the labels, for the
 * caption (HTML), "" when none. Negative shares (a stage that cancels part of the error) are clipped
 * at 0 in the stack; the interaction is drawn beside the stack as a point, with its sign. */
static int write_explain_plot(FILE *gp, const char *dir, const ex_item *it, int n, char *common, size_t clen)
{
    const char *names[MAX_STAGES];
    int ns = 0, nb = 0, maxlab = 0;
    const char *first = NULL;
    size_t pre = 0, suf = 0; /* parts of the ids every explained case shares, cut at '-' */
    for (int k = 0; k < n; k++) {
        if (!it[k].ex) continue;
        size_t j;
        json_t *st;
        json_array_foreach(json_object_get(it[k].ex, "stages"), j, st) {
            const char *nm = str(st, "stage");
            if (!strcmp(nm, "interaction")) continue;
            int seen = 0;
            for (int q = 0; q < ns; q++) seen |= !strcmp(names[q], nm);
            if (!seen && ns < MAX_STAGES) names[ns++] = nm;
        }
        const char *id = it[k].id;
        if (!nb++) {
            first = id;
            pre = suf = strlen(id);
        }
        size_t p = 0, q = 0, li = strlen(id), lf = strlen(first);
        while (p < pre && p < li && id[p] == first[p]) p++;
        while (q < suf && q < li && q < lf && id[li - 1 - q] == first[lf - 1 - q]) q++;
        pre = p;
        suf = q;
    }
    if (!nb || !ns) return 0;
    /* labels: the ids without their common prefix and suffix (named in the x label) */
    while (pre > 0 && first[pre - 1] != '-') pre--;
    while (suf > 0 && first[strlen(first) - suf] != '-') suf--;
    if (nb == 1 || pre + suf >= strlen(first)) pre = suf = 0;
    for (int k = 0; k < n; k++)
        if (it[k].ex && (int)(strlen(it[k].id) - pre - suf) > maxlab) maxlab = (int)(strlen(it[k].id) - pre - suf);
    common[0] = 0;
    if (pre || suf)
        snprintf(common, clen, "explained cases: %.*s*%s", (int)pre, first, first + strlen(first) - suf);
    const int bylabel = nb <= 24; /* case ids under the bars; else numbers (#k in the details) */
    FILE *d = open_in(dir, "expl.dat");
    if (!d) return -1;
    fputs("\"case\"", d);
    for (int q = 0; q < ns; q++) {
        fputc(' ', d);
        dat_str(d, names[q]);
    }
    fputs(" \"interaction\"\n", d);
    double ymax = 1.0, ymin = 0.0;
    int row = 0;
    for (int k = 0; k < n; k++) {
        if (!it[k].ex) continue;
        const json_t *stages = json_object_get(it[k].ex, "stages");
        row++;
        if (bylabel) {
            char lab[200];
            snprintf(lab, sizeof lab, "%.*s", (int)(strlen(it[k].id) - pre - suf), it[k].id + pre);
            dat_str(d, lab);
        }
        else fprintf(d, "\"#%d\"", row);
        double stack = 0, inter = 0;
        for (int q = 0; q < ns; q++) {
            double v = 0;
            size_t j;
            json_t *st;
            json_array_foreach(stages, j, st)
                if (!strcmp(str(st, "stage"), names[q])) v = fd_json_number(json_object_get(st, "share"));
            if (!(v > 0) || isinf(v)) v = 0; /* negative or not a number: clipped */
            if (v > 1e6) v = 1e6; /* shares add up to 1; 1e308s (a crafted file) overflow the stack
                                     in gnuplot and lose the page (the table has the value) */
            stack += v;
            fprintf(d, " %.17g", v);
        }
        size_t j;
        json_t *st;
        json_array_foreach(stages, j, st)
            if (!strcmp(str(st, "stage"), "interaction")) inter = fd_json_number(json_object_get(st, "share"));
        if (isnan(inter) || isinf(inter)) inter = 0;
        inter = inter > 1e6 ? 1e6 : inter < -1e6 ? -1e6 : inter;
        fprintf(d, " %.17g\n", inter);
        if (stack > ymax) ymax = stack;
        if (inter > ymax) ymax = inter;
        if (inter < ymin) ymin = inter;
    }
    fclose(d);
    static const char *const colours[MAX_STAGES] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                                                    "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295"};
    const int rot = bylabel && maxlab * nb > 90;
    const int h = 520 + (rot ? maxlab * 5 : 0) + 18 * ns;
    plot_head(gp, h, "expl.svg");
    fprintf(gp, "set title 'Error budget by stage: share of each case''s error (CPU replay)'\n"
                "set grid ytics\nset key outside below left Left reverse maxcols 2\nset key autotitle columnheader\n"
                "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.9 border rgb 'white'\n"
                "set boxwidth 0.7 relative\nset ylabel 'share = <part, e> / <e, e>'\n"
                "set yrange [%.17g:%.17g]\nset xtics %s\nset arrow 1 from graph 0, first 1 to graph 1, first 1 "
                "nohead dt 2 lc rgb '#777777'\nset arrow 2 from graph 0, first 0 to graph 1, first 0 nohead lc rgb "
                "'#333333'\n",
            gp_num(ymin - 0.05), gp_num(ymax * 1.05 + 0.02), rot ? "rotate by 90 right font 'sans,9'" : "norotate font 'sans,9'");
    if (!bylabel) fprintf(gp, "set xlabel 'explained case (#k as in the list below)'\n");
    else if (*common) fprintf(gp, "set xlabel 'explained case (the part all ids share is under the plot)'\n");
    fprintf(gp, "plot ");
    for (int q = 0; q < ns; q++) /* titles: the column heads (the stage names) */
        fprintf(gp, "%s'expl.dat' using %d%s lc rgb '%s'", q ? ", " : "", q + 2, q ? "" : ":xtic(1)", colours[q]);
    fprintf(gp, ", 'expl.dat' using 0:%d with points pt 9 ps 1.4 lc rgb 'black' title "
                "'interaction (not stacked; negative shares are clipped at 0 in the bars)'\n",
            ns + 2);
    return 1;
}

/* The best hypothesis of an explanation (the one marked "best"), or NULL. */
static const json_t *best_hypo(const json_t *ex)
{
    size_t j;
    json_t *h;
    json_array_foreach(json_object_get(ex, "hypotheses"), j, h)
        if (json_is_true(json_object_get(h, "best"))) return h;
    return NULL;
}

static void num(FILE *f, const json_t *j);

/* The explanations section: one collapsible block per explained case. */
static void explain_section(FILE *f, const ex_item *it, int n)
{
    if (!n) return;
    fprintf(f, "<h2>Explanations</h2>\n<p class=\"meta\">Where each explained case's error comes from "
               "(<code>flashdrift explain</code>, docs/attribution.md): the CPU replay's error budget by stage; "
               "the shares and the interaction add up to 1.</p>\n");
    int row = 0;
    for (int k = 0; k < n; k++) {
        const json_t *ex = it[k].ex;
        fprintf(f, "<details class=\"ex\"%s><summary>", n <= 8 ? " open" : "");
        if (ex) fprintf(f, "#%d ", ++row);
        html_esc(f, it[k].id);
        if (it[k].verdict) {
            fprintf(f, " — ");
            verdict_el(f, "span", it[k].verdict);
        }
        if (ex) fprintf(f, " — %s", json_is_true(json_object_get(ex, "gross")) ? "<b>not rounding</b>" : "rounding");
        fprintf(f, "</summary>\n");
        if (!ex) {
            fprintf(f, "<p>explanation failed: ");
            html_esc(f, it[k].error);
            fprintf(f, "</p></details>\n");
            continue;
        }
        fprintf(f, "<p><b>");
        html_esc(f, str(ex, "backend"));
        if (*str(ex, "inject")) {
            fprintf(f, ", injected ");
            html_esc(f, str(ex, "inject"));
        }
        fprintf(f, "</b>: ");
        html_esc(f, str(ex, "summary"));
        fprintf(f, "</p>\n");
        const json_t *bh = best_hypo(ex);
        if (bh) {
            fprintf(f, "<p>hypothesis: <b>");
            html_esc(f, str(bh, "name"));
            fprintf(f, "</b> (");
            html_esc(f, str(bh, "what")); /* NB: cannot hold markup, escaped */
            fprintf(f, "): max abs error left ");
            num(f, json_object_get(bh, "residual_max_abs"));
            fprintf(f, "%s</p>\n", json_is_true(json_object_get(bh, "explains")) ? ", <b>explains it</b>"
                                                                                 : ", does not explain it");
        }
        const json_t *ke = json_object_get(ex, "kernel_error");
        fprintf(f, "<p>kernel error max abs ");
        num(f, json_object_get(ke, "max_abs"));
        fprintf(f, ", rel l2 ");
        num(f, json_object_get(ke, "rel_l2"));
        fprintf(f, "; rounding budget ");
        num(f, json_object_get(ex, "rounding_budget"));
        fprintf(f, ", limit ");
        num(f, json_object_get(ex, "limit"));
        fprintf(f, "</p>\n<table><tr><th>stage</th><th>max abs</th><th>rel l2</th><th>share</th></tr>\n");
        size_t j;
        json_t *st;
        json_array_foreach(json_object_get(ex, "stages"), j, st) {
            fprintf(f, "<tr><td>");
            html_esc(f, str(st, "stage"));
            fprintf(f, "</td><td>");
            num(f, json_object_get(st, "max_abs"));
            fprintf(f, "</td><td>");
            num(f, json_object_get(st, "rel_l2"));
            const json_t *sh = json_object_get(st, "share");
            if (json_is_number(sh)) fprintf(f, "</td><td>%.1f%%</td></tr>\n", 100.0 * json_number_value(sh));
            else {
                fprintf(f, "</td><td>");
                num(f, sh);
                fprintf(f, "</td></tr>\n");
            }
        }
        fprintf(f, "</table></details>\n");
    }
}

/* Writes the data files and the script; flags which plots exist; common as in
 * write_explain_plot. */
/* Backward cases: per backend and gradient, the error fields, the rule's ratio, the run-to-run
 * spread and the replay's match (as summary.md's "Gradients"). */
static void grad_table(FILE *f, const json_t *report)
{
    size_t i;
    json_t *c;
    int n = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        if (!json_is_object(json_object_get(c, "backward"))) continue;
        if (!n++)
            fprintf(f, "<h2>Gradients</h2>\n<table><tr><th>case</th><th>backend</th><th>grad</th><th>max abs</th>"
                       "<th>rel l2</th><th>max ulp</th><th>flash/std</th><th>run-to-run ulps</th><th>replay match</th></tr>\n");
        const char *key;
        json_t *b;
        int first = 1;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const json_t *g = json_object_get(b, "grad");
            if (!json_is_object(g)) continue;
            static const char *const gn[3] = {"dq", "dk", "dv"};
            const int measured = json_is_true(json_object_get(g, "measured"));
            for (int t = 0; t < (measured ? 3 : 1); t++) {
                fprintf(f, "<tr><td>");
                if (first) html_esc(f, str(c, "id"));
                first = 0;
                fprintf(f, "</td><td>");
                html_esc(f, key);
                if (!measured) {
                    fprintf(f, "</td><td colspan=\"7\">not measured: ");
                    html_esc(f, str(g, "note"));
                    fprintf(f, "</td></tr>\n");
                    continue;
                }
                const json_t *e = json_object_get(g, gn[t]);
                fprintf(f, "</td><td>%s</td>", gn[t]);
                static const char *const cols[] = {"max_abs", "rel_l2", "max_ulp", "fa_ratio", NULL};
                for (int k = 0; cols[k]; k++) {
                    fprintf(f, "<td>");
                    num(f, json_object_get(e, cols[k]));
                    fprintf(f, "</td>");
                }
                fprintf(f, "<td>");
                num(f, json_object_get(json_object_get(e, "repeat"), "max_ulp_spread"));
                fprintf(f, "</td><td>");
                num(f, json_object_get(json_object_get(e, "replay"), "match_rate"));
                fprintf(f, "</td></tr>\n");
            }
        }
    }
    if (n) fprintf(f, "</table>\n");
}

/* The bias stage: per backend, the worst column and row t against the threshold (as
 * summary.md's "Systematic bias"), biased outputs first. */
static void bias_table(FILE *f, const json_t *report)
{
    int n = 0;
    for (int part = 0; part < 2; part++) {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(report, "cases"), i, c) {
            const char *key;
            json_t *b;
            json_object_foreach(json_object_get(c, "backends"), key, b) {
                const json_t *z = json_object_get(b, "bias");
                if (!json_is_object(z)) continue;
                const int biased = json_is_true(json_object_get(z, "measured")) && !strcmp(str(z, "verdict"), "biased");
                if (biased != !part) continue;
                if (!n++)
                    fprintf(f, "<h2>Systematic bias</h2>\n<table><tr><th>case</th><th>backend</th><th>verdict</th>"
                               "<th>seeds</th><th>worst column t</th><th>column</th><th>worst row t</th><th>row</th>"
                               "<th>threshold</th><th>mean/rms</th></tr>\n");
                fprintf(f, "<tr><td>");
                html_esc(f, str(c, "id"));
                fprintf(f, "</td><td>");
                html_esc(f, key);
                if (!json_is_true(json_object_get(z, "measured"))) {
                    fprintf(f, "</td><td colspan=\"8\">not measured: ");
                    html_esc(f, str(z, "note"));
                    fprintf(f, "</td></tr>\n");
                    continue;
                }
                fprintf(f, "</td><td>%s</td>", biased ? "<b>biased</b>" : "unbiased");
                static const char *const cols[] = {"seeds", "worst_column_z", "worst_column", "worst_row_z", "worst_row",
                                                   "threshold", "mean_over_rms", NULL};
                for (int k = 0; cols[k]; k++) {
                    fprintf(f, "<td>");
                    num(f, json_object_get(z, cols[k]));
                    fprintf(f, "</td>");
                }
                fprintf(f, "</tr>\n");
            }
        }
    }
    if (n) fprintf(f, "</table>\n");
}

static int write_plots(const json_t *report, const json_t *baseline, const char *dir, int have[6], char *common,
                       size_t clen)
{
    FILE *gp = open_in(dir, "plots.gp");
    if (!gp) return -1;
    const json_t *cases = json_object_get(report, "cases");
    size_t i;
    json_t *c;
    static series ss[MAX_SERIES];
    int ns = 0;
    /* 1. error vs sequence length per dtype and backend */
    json_array_foreach(cases, i, c) {
        const char *key;
        json_t *b;
        const double sk = (double)json_integer_value(json_object_get(json_object_get(c, "shape"), "seqlen_k"));
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const double y = fd_json_number(json_object_get(b, "rel_l2"));
            if (!json_is_true(json_object_get(b, "ok")) || !(y > 0) || isinf(y)) continue;
            char name[96];
            snprintf(name, sizeof name, "%s %s", str(c, "dtype"), key);
            series *s = find_series(ss, &ns, name);
            if (s) add_point_max(s, sk, y);
        }
    }
    FILE *d = open_in(dir, "seq.dat");
    if (!d) { fclose(gp); return -1; }
    for (int k = 0; k < ns; k++) {
        sort_series(&ss[k]);
        dat_str(d, ss[k].name); /* the block's column head: its title in the key */
        fputs(" \"rel_l2\"\n", d);
        for (int p = 0; p < ss[k].n; p++) fprintf(d, "%.17g %.17g\n", ss[k].x[p], ss[k].y[p]);
        fprintf(d, "\n\n");
    }
    fclose(d);
    have[0] = ns > 0;
    if (have[0]) {
        plot_head(gp, 430, "seq.svg");
        fprintf(gp, "set grid\nset key outside right top\n"
                    "set title 'Error vs sequence length (worst case per seqlen_k)'\n"
                    "set xlabel 'seqlen_k'\nset ylabel 'rel l2 = ||out - ref|| / ||ref||'\nset logscale y\n"
                    "set format y '%%.0e'\nplot ");
        for (int k = 0; k < ns; k++)
            fprintf(gp, "%s'seq.dat' index %d using 1:2 with linespoints lw 2 pt 7 ps 0.8 title columnheader(1)",
                    k ? ", " : "", k);
        fprintf(gp, "\n");
    }
    /* 2. histogram of p99 ulp error per backend */
    ns = 0;
    double vmax = 0;
    json_array_foreach(cases, i, c) {
        const char *key;
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const double y = fd_json_number(json_object_get(b, "p99_ulp"));
            if (!json_is_true(json_object_get(b, "ok")) || isnan(y) || isinf(y)) continue;
            series *s = find_series(ss, &ns, key);
            if (s && s->n < MAX_POINTS) s->y[s->n++] = y;
            if (y > vmax) vmax = y;
        }
    }
    d = open_in(dir, "ulp.dat");
    if (!d) { fclose(gp); return -1; }
    const int nb = 24;
    const double w = vmax > 0 ? vmax / nb : 1.0;
    for (int k = 0; k < ns; k++) {
        int cnt[24] = {0};
        qsort(ss[k].y, (size_t)ss[k].n, sizeof(double), cmp_dbl);
        for (int p = 0; p < ss[k].n; p++) {
            /* in double: a negative or huge value of a crafted report stays in the bins */
            const double q = ss[k].y[p] / w;
            cnt[q < 1 ? 0 : q >= nb ? nb - 1 : (int)q]++;
        }
        dat_str(d, ss[k].name);
        fputs(" \"cases\"\n", d);
        for (int bi = 0; bi < nb; bi++) fprintf(d, "%.17g %d\n", (bi + 0.5) * w, cnt[bi]);
        fprintf(d, "\n\n");
    }
    fclose(d);
    have[1] = ns > 0;
    if (have[1]) {
        plot_head(gp, 430, "ulp.svg");
        fprintf(gp, "set grid\nset key outside right top\nset title 'p99 ulp error per case (histogram)'\n"
                    "set xlabel '99th percentile of |out - ref| / ulp(ref), output dtype'\nset ylabel 'cases'\n"
                    "set boxwidth %.17g absolute\nset style fill transparent solid 0.45 border\nset yrange [0:*]\nplot ",
                gp_num(w * 0.9));
        for (int k = 0; k < ns; k++)
            fprintf(gp, "%s'ulp.dat' index %d using 1:2 with boxes title columnheader(1)", k ? ", " : "", k);
        fprintf(gp, "\n");
    }
    /* 3. dropout keep rate vs p, as the deviation from 1 - p */
    d = open_in(dir, "keep.dat");
    if (!d) { fclose(gp); return -1; }
    int nk = 0;
    double pmax = 0;
    json_array_foreach(cases, i, c) {
        const json_t *ds = json_object_get(c, "dropout_stats");
        const json_int_t tot = json_integer_value(json_object_get(ds, "total"));
        if (!ds || tot <= 0) continue;
        const double p = fd_json_number(json_object_get(c, "dropout"));
        const double kr = fd_json_number(json_object_get(ds, "keep_rate"));
        const double q = 1.0 - p;
        fprintf(d, "%.17g %.17g %.17g\n", p, kr - q, 2.0 * sqrt(q * p / (double)tot));
        if (p > pmax) pmax = p;
        nk++;
    }
    fclose(d);
    have[2] = nk > 0;
    if (have[2]) {
        plot_head(gp, 430, "keep.svg");
        fprintf(gp, "set grid\nset key outside right top\n"
                    "set title 'Dropout keep rate vs p (measured minus 1 - p, +-2 sigma)'\n"
                    "set xlabel 'dropout p'\nset ylabel 'keep rate - (1 - p)'\nset samples 2000\n"
                    "set xrange [0:%.17g]\nthr(x) = (floor((1 - x) * 255) + 1) / 256.0 - (1 - x)\n"
                    "plot 'keep.dat' using 1:2:3 with yerrorbars pt 7 ps 0.8 title 'measured (per case)', "
                    "thr(x) with lines lw 2 title 'byte threshold: (floor((1-p)*255)+1)/256', "
                    "0 with lines lw 2 dt 2 title 'nominal 1 - p'\n",
                gp_num(pmax * 1.25 + 0.02));
    }
    /* 4. baseline vs current */
    have[3] = 0;
    if (baseline) {
        d = open_in(dir, "base.dat");
        if (!d) { fclose(gp); return -1; }
        int npts = 0;
        json_t *bidx = case_index(baseline);
        json_array_foreach(cases, i, c) {
            const json_t *bc = json_object_get(bidx, str(c, "id"));
            if (!bc) continue;
            const char *key;
            json_t *b;
            json_object_foreach(json_object_get(c, "backends"), key, b) {
                const json_t *bb = json_object_get(json_object_get(bc, "backends"), key);
                const double x = fd_json_number(json_object_get(bb, "rel_l2"));
                const double y = fd_json_number(json_object_get(b, "rel_l2"));
                if (!(x > 0) || !(y > 0) || isinf(x) || isinf(y)) continue;
                fprintf(d, "%.17g %.17g\n", x, y);
                npts++;
            }
        }
        json_decref(bidx);
        fclose(d);
        have[3] = npts > 0;
        if (have[3]) {
            plot_head(gp, 430, "base.svg");
            fprintf(gp, "set grid\nset key outside right top\n"
                        "set title 'Baseline vs current: rel l2 per case and backend'\n"
                        "set xlabel 'baseline rel l2'\nset ylabel 'current rel l2'\nset logscale xy\n"
                        "set format x '%%.0e'\nset format y '%%.0e'\nset size ratio -1\n"
                        "plot 'base.dat' using 1:2 with points pt 7 ps 0.8 title 'case x backend', "
                        "x with lines dt 2 title 'no change', 1.25*x with lines dt 3 title '+25%%'\n");
        }
    }
    /* 5. the error budget of the explained cases */
    static ex_item items[MAX_EX_BARS];
    const int nit = report_ex_items(report, items, MAX_EX_BARS);
    have[4] = write_explain_plot(gp, dir, items, nit, common, clen);
    if (have[4] < 0) { fclose(gp); return -1; }
    /* 6. backward cases: FlashAttention's ratio per gradient (flash / its standard), one
     * point per case and flash backend, against the policy's factor */
    d = open_in(dir, "grad.dat");
    if (!d) { fclose(gp); return -1; }
    static const char *const gn[3] = {"dq", "dk", "dv"};
    int ng = 0;
    for (int g = 0; g < 3; g++) {
        int x = 0;
        fprintf(d, "\"%s\"\n", gn[g]);
        json_array_foreach(cases, i, c) {
            if (!json_is_object(json_object_get(c, "backward"))) continue;
            x++;
            const char *key;
            json_t *b;
            json_object_foreach(json_object_get(c, "backends"), key, b) {
                const double y = fd_json_number(json_object_get(json_object_get(json_object_get(b, "grad"), gn[g]), "fa_ratio"));
                if (!(y >= 0) || isinf(y)) continue;
                fprintf(d, "%d %.17g\n", x, y);
                ng++;
            }
        }
        fprintf(d, "\n\n");
    }
    fclose(d);
    have[5] = ng > 0;
    if (have[5]) {
        const double rule = fd_json_number(json_object_get(json_object_get(json_object_get(report, "policy"), "grad_fa_ratio"), "dq"));
        plot_head(gp, 430, "grad.svg");
        fprintf(gp, "set grid\nset key outside right top\n"
                    "set title 'Backward: flash max abs error over standard attention, per gradient'\n"
                    "set xlabel 'backward case (report order)'\nset ylabel 'flash / standard'\nset yrange [0:*]\n"
                    "plot 'grad.dat' index 0 using 1:2 with points pt 7 ps 0.9 title columnheader(1), "
                    "'grad.dat' index 1 using 1:2 with points pt 5 ps 0.8 title columnheader(1), "
                    "'grad.dat' index 2 using 1:2 with points pt 9 ps 0.9 title columnheader(1)");
        if (rule > 0) fprintf(gp, ", %.17g with lines dt 2 lw 2 title 'policy factor (dq)'", gp_num(rule));
        fprintf(gp, "\n");
    }
    fprintf(gp, "set output\n");
    fclose(gp);
    return 0;
}

/* alt: fixed text; note: text from the input (HTML-escaped) added to the caption, or "". */
static void embed(FILE *f, const char *dir, const char *name, const char *alt, const char *note)
{
    char p[4200];
    size_t n = 0;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *svg = slurp(p, &n);
    if (!svg || !n) {
        free(svg);
        return;
    }
    fprintf(f, "<figure><img alt=\"%s\" src=\"data:image/svg+xml;base64,", alt);
    base64(f, (const unsigned char *)svg, n);
    fprintf(f, "\"><figcaption>%s", alt);
    if (*note) {
        fprintf(f, "<br>");
        html_esc(f, note);
    }
    fprintf(f, "</figcaption></figure>\n");
    free(svg);
}

static void num(FILE *f, const json_t *j)
{
    if (!j) fprintf(f, "–");
    else if (json_is_number(j)) fprintf(f, "%.3g", json_number_value(j));
    else html_esc(f, json_string_value(j));
}

static const char *css =
    "body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{margin:0 0 4px}"
    ".meta{color:#555;font-size:13px}.tot span{display:inline-block;padding:4px 10px;margin:8px 6px 8px 0;"
    "border-radius:4px;font-weight:600}.PASS{background:#d7f5dd}.MARGINAL{background:#fff1c2}"
    ".FAIL{background:#ffd4d4}.UNDECIDED{background:#e3e3ff}table{border-collapse:collapse;font-size:12px;"
    "margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child"
    "{text-align:left;font-family:monospace}.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;"
    "border:1px solid #ddd;padding:6px}figure img{width:760px;max-width:100%}figcaption{font-size:12px;"
    "color:#555}details{margin:2px 0;font-size:13px}summary{cursor:pointer;font-family:monospace}";

/* Runs gnuplot on the scripts in dir and opens the in-memory page it is embedded in; on
 * failure removes dir and returns run_gnuplot's code (or -1, out of memory). */
static int plot_then_open(const char *dir, const char *path, FILE **f, char **buf, size_t *len,
                          char *err, size_t errlen)
{
    int g = run_gnuplot(dir, err, errlen);
    if (g) {
        cleanup(dir);
        return g;
    }
    *f = open_memstream(buf, len);
    if (!*f) {
        cleanup(dir);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    return 0;
}

/* Which two reports the baseline section compares and what differs between the runs
 * (flash_config, policy, case file, machine, GPU, version, commit): HTML only, escaped;
 * none of it reaches the gnuplot program. */
static void runs_table(FILE *f, const json_t *dj)
{
    fprintf(f, "<table><tr><th></th><th>report</th><th>flashdrift</th><th>commit</th><th>host</th><th>GPU</th>"
               "<th>created</th></tr>\n");
    for (int k = 0; k < 2; k++) {
        const json_t *sd = json_object_get(dj, k ? "new" : "old"), *gpu = json_object_get(sd, "gpu");
        const char *const cells[] = {str(sd, "path"), str(sd, "version"), str(sd, "git_commit"),
                                     str(sd, "hostname"), json_is_string(gpu) ? json_string_value(gpu) : "none",
                                     str(sd, "created")};
        fprintf(f, "<tr><td>%s</td>", k ? "new" : "old");
        for (int i = 0; i < 6; i++) {
            fprintf(f, "<td>");
            html_esc(f, cells[i]);
            fprintf(f, "</td>");
        }
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</table>\n");
    const json_t *ch = json_object_get(dj, "changes");
    if (!json_array_size(ch)) {
        fprintf(f, "<p>Same %s in both runs.</p>\n", fd_diff_settings);
        return;
    }
    fprintf(f, "<p>Changed between the runs:</p>\n<table class=\"changes\"><tr><th>setting</th><th>old</th>"
               "<th>new</th></tr>\n");
    size_t i;
    json_t *c;
    json_array_foreach(ch, i, c) {
        char a[512], b[512];
        fd_diff_value_str(c, "old", a, sizeof a);
        fd_diff_value_str(c, "new", b, sizeof b);
        fprintf(f, "<tr><td>");
        html_esc(f, str(c, "what"));
        fprintf(f, "</td><td>");
        html_esc(f, a);
        fprintf(f, "</td><td>");
        html_esc(f, b);
        fprintf(f, "</td></tr>\n");
    }
    fprintf(f, "</table>\n");
}

/* The diff against the baseline (harness/fd_diff.h's tree): the two runs, the counts by
 * status, and every case that is not identical (the first 200). */
static void baseline_section(FILE *f, const json_t *dj)
{
    fprintf(f, "<h2>Against the baseline</h2>\n");
    runs_table(f, dj);
    fprintf(f, "<p>");
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(dj, "summary"), key, v) {
        html_esc(f, key);
        fprintf(f, ": <b>%lld</b> · ", (long long)json_integer_value(v));
    }
    fprintf(f, "</p>\n<table><tr><th>case</th><th>status</th><th>verdict</th></tr>\n");
    size_t i;
    json_t *c;
    int rows = 0;
    json_array_foreach(json_object_get(dj, "cases"), i, c) {
        if (!strcmp(str(c, "status"), "identical") || rows++ >= 200) continue;
        fprintf(f, "<tr><td>");
        html_esc(f, str(c, "id"));
        fprintf(f, "</td><td>");
        html_esc(f, str(c, "status"));
        fprintf(f, "</td><td>");
        html_esc(f, str(c, "old_verdict"));
        fprintf(f, " → ");
        html_esc(f, str(c, "new_verdict"));
        fprintf(f, "</td></tr>\n");
    }
    fprintf(f, "</table>\n");
}

int fd_render_html(const json_t *report, const json_t *baseline, const json_t *diff, const char *path, char *err,
                   size_t errlen)
{
    const char *tmpd = getenv("TMPDIR");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/flashdrift-plot-XXXXXX", tmpd && *tmpd ? tmpd : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(err, errlen, "cannot create a temporary directory for the plots: %s", strerror(errno));
        return -1;
    }
    int have[6] = {0, 0, 0, 0, 0, 0};
    char common[256];
    if (write_plots(report, baseline, dir, have, common, sizeof common)) {
        snprintf(err, errlen, "%s: cannot write plot data: %s", dir, strerror(errno));
        cleanup(dir);
        return -1;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = NULL;
    int g = plot_then_open(dir, path, &f, &buf, &len, err, errlen);
    if (g) return g;
    const json_t *cf = json_object_get(report, "case_file"), *mach = json_object_get(report, "machine");
    const json_t *tot = json_object_get(report, "totals");
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>flashdrift: ");
    html_esc(f, str(cf, "name"));
    fprintf(f, "</title><style>%s</style></head><body>\n<h1>flashdrift: ", css);
    html_esc(f, str(cf, "name"));
    fprintf(f, "</h1>\n<div class=\"meta\">");
    html_esc(f, str(cf, "path"));
    fprintf(f, " · flashdrift ");
    html_esc(f, str(report, "version"));
    fprintf(f, " (");
    html_esc(f, str(report, "git_commit"));
    fprintf(f, ") · ");
    html_esc(f, str(report, "created"));
    fprintf(f, " · ");
    html_esc(f, str(mach, "hostname"));
    fprintf(f, " · ");
    html_esc(f, str(mach, "cpu"));
    const json_t *gpu = json_object_get(mach, "gpu");
    if (json_is_object(gpu)) {
        fprintf(f, " · GPU ");
        html_esc(f, str(gpu, "name"));
    }
    fprintf(f, " · backends ");
    html_esc(f, str(report, "backends"));
    if (!json_is_true(json_object_get(report, "complete"))) fprintf(f, " · <b>INCOMPLETE RUN</b>");
    fprintf(f, "</div>\n<div class=\"tot\"><span>%lld cases</span><span class=\"PASS\">%lld PASS</span>"
               "<span class=\"MARGINAL\">%lld MARGINAL</span><span class=\"FAIL\">%lld FAIL</span>"
               "<span class=\"UNDECIDED\">%lld UNDECIDED</span></div>\n",
            json_integer_value(json_object_get(tot, "cases")), json_integer_value(json_object_get(tot, "pass")),
            json_integer_value(json_object_get(tot, "marginal")), json_integer_value(json_object_get(tot, "fail")),
            json_integer_value(json_object_get(tot, "undecided")));
    fprintf(f, "<h2>Plots</h2><div class=\"plots\">\n");
    if (have[0]) embed(f, dir, "seq.svg", "Error (rel l2) vs sequence length, per dtype and backend", "");
    if (have[1]) embed(f, dir, "ulp.svg", "Histogram of the p99 ulp error per case, per backend", "");
    if (have[2]) embed(f, dir, "keep.svg", "Dropout keep rate vs p against 1 - p and the byte threshold", "");
    if (have[3]) embed(f, dir, "base.svg", "Baseline vs current (rel l2)", "");
    if (have[4])
        embed(f, dir, "expl.svg", "Error budget of the explained cases: stage shares stacked, interaction beside",
              common);
    if (have[5]) embed(f, dir, "grad.svg", "Backward: FlashAttention's ratio per gradient (dq, dk, dv)", "");
    fprintf(f, "</div>\n");
    cleanup(dir);
    if (baseline && diff) baseline_section(f, diff);
    fprintf(f, "<h2>Summary</h2>\n<table><tr><th>case</th><th>verdict</th><th>backend</th><th>max abs</th>"
               "<th>rel l2</th><th>max ulp</th><th>p99 ulp</th><th>LSE err</th><th>flash/std</th><th>hash</th></tr>\n");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *key;
        json_t *b;
        int first = 1;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            fprintf(f, "<tr><td>");
            if (first) html_esc(f, str(c, "id"));
            fprintf(f, "</td>");
            verdict_el(f, "td", first ? str(c, "verdict") : "");
            fprintf(f, "<td>");
            html_esc(f, key);
            fprintf(f, "</td>");
            if (!json_is_true(json_object_get(b, "ok"))) {
                fprintf(f, "<td colspan=\"7\">error: ");
                html_esc(f, str(b, "error"));
                fprintf(f, "</td></tr>\n");
            } else {
                static const char *const cols[] = {"max_abs", "rel_l2", "max_ulp", "p99_ulp", "lse_max_abs", "fa_ratio", NULL};
                for (int k = 0; cols[k]; k++) {
                    fprintf(f, "<td>");
                    num(f, json_object_get(b, cols[k]));
                    fprintf(f, "</td>");
                }
                fprintf(f, "<td>");
                html_esc(f, str(b, "output_hash"));
                fprintf(f, "</td></tr>\n");
            }
            first = 0;
        }
    }
    fprintf(f, "</table>\n");
    grad_table(f, report);
    bias_table(f, report);
    {
        static ex_item items[MAX_EX_BARS];
        explain_section(f, items, report_ex_items(report, items, MAX_EX_BARS));
    }
    fprintf(f, "<h2>Cases</h2>\n");
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const json_t *sh = json_object_get(c, "shape");
        fprintf(f, "<details><summary>");
        html_esc(f, str(c, "id"));
        fprintf(f, " — ");
        verdict_el(f, "span", str(c, "verdict"));
        fprintf(f, "</summary><table>");
        fprintf(f, "<tr><td>shape</td><td>batch %lld, heads %lld, kv_heads %lld, seqlen_q %lld, seqlen_k %lld, head_dim %lld</td></tr>",
                json_integer_value(json_object_get(sh, "batch")), json_integer_value(json_object_get(sh, "heads")),
                json_integer_value(json_object_get(sh, "kv_heads")), json_integer_value(json_object_get(sh, "seqlen_q")),
                json_integer_value(json_object_get(sh, "seqlen_k")), json_integer_value(json_object_get(sh, "head_dim")));
        fprintf(f, "<tr><td>dtype, mask, dist</td><td>");
        html_esc(f, str(c, "dtype"));
        fprintf(f, ", ");
        html_esc(f, str(c, "mask"));
        fprintf(f, ", ");
        html_esc(f, str(c, "dist"));
        fprintf(f, "</td></tr><tr><td>dropout p, seeds</td><td>");
        num(f, json_object_get(c, "dropout"));
        fprintf(f, ", input seed %lld, dropout seed %lld, offset %lld</td></tr>",
                json_integer_value(json_object_get(c, "input_seed")), json_integer_value(json_object_get(c, "dropout_seed")),
                json_integer_value(json_object_get(c, "dropout_offset")));
        fprintf(f, "<tr><td>rows checked</td><td>%zu</td></tr>", json_array_size(json_object_get(c, "rows_checked")));
        const json_t *ds = json_object_get(c, "dropout_stats");
        if (ds) {
            fprintf(f, "<tr><td>keep rate</td><td>");
            num(f, json_object_get(ds, "keep_rate"));
            fprintf(f, " (1 - p = ");
            num(f, json_object_get(ds, "keep_nominal"));
            fprintf(f, ", threshold ");
            num(f, json_object_get(ds, "keep_threshold"));
            fprintf(f, ", z = ");
            num(f, json_object_get(ds, "z_threshold"));
            fprintf(f, ")</td></tr>");
        }
        const char *key;
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const json_t *wst = json_object_get(b, "worst");
            if (!wst) continue;
            fprintf(f, "<tr><td>");
            html_esc(f, key);
            fprintf(f, " worst</td><td>b %lld h %lld row %lld d %lld: got ", json_integer_value(json_object_get(wst, "b")),
                    json_integer_value(json_object_get(wst, "h")), json_integer_value(json_object_get(wst, "row")),
                    json_integer_value(json_object_get(wst, "d")));
            num(f, json_object_get(wst, "got"));
            fprintf(f, ", ref ");
            num(f, json_object_get(wst, "ref"));
            fprintf(f, "</td></tr>");
        }
        if (*str(c, "reasons")) {
            fprintf(f, "<tr><td>why</td><td>");
            html_esc(f, str(c, "reasons"));
            fprintf(f, "</td></tr>");
        }
        const json_t *cx = json_object_get(c, "explain");
        if (json_is_object(cx) || json_is_string(json_object_get(c, "explain_error"))) {
            fprintf(f, "<tr><td>explanation</td><td>");
            html_esc(f, json_is_object(cx) ? str(cx, "summary") : str(c, "explain_error"));
            fprintf(f, "</td></tr>");
        }
        fprintf(f, "</table></details>\n");
    }
    fprintf(f, "</body></html>\n");
    fclose(f);
    int rc = fd_write_text_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

int fd_render_explain_html(const json_t *doc, const char *path, char *err, size_t errlen)
{
    static ex_item items[MAX_EX_BARS];
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "explain"), i, e)
        if (json_is_object(e) && n < MAX_EX_BARS) items[n++] = (ex_item){str(e, "case"), NULL, e, NULL};
    const char *tmpd = getenv("TMPDIR");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/flashdrift-plot-XXXXXX", tmpd && *tmpd ? tmpd : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(err, errlen, "cannot create a temporary directory for the plots: %s", strerror(errno));
        return -1;
    }
    FILE *gp = open_in(dir, "plots.gp");
    char common[256];
    const int have = gp ? write_explain_plot(gp, dir, items, n, common, sizeof common) : -1;
    if (gp) {
        fprintf(gp, "set output\n");
        fclose(gp);
    }
    if (have < 0) {
        snprintf(err, errlen, "%s: cannot write plot data: %s", dir, strerror(errno));
        cleanup(dir);
        return -1;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = NULL;
    int g = plot_then_open(dir, path, &f, &buf, &len, err, errlen);
    if (g) return g;
    const char *cf = str(doc, "case_file");
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>flashdrift explain: ");
    html_esc(f, cf);
    fprintf(f, "</title><style>%s</style></head><body>\n<h1>flashdrift explain</h1>\n<div class=\"meta\">", css);
    html_esc(f, cf);
    fprintf(f, " · %d explained case%s</div>\n", n, n == 1 ? "" : "s");
    if (have > 0) {
        fprintf(f, "<h2>Plots</h2><div class=\"plots\">\n");
        embed(f, dir, "expl.svg", "Error budget of the explained cases: stage shares stacked, interaction beside",
              common);
        fprintf(f, "</div>\n");
    }
    cleanup(dir);
    explain_section(f, items, n);
    fprintf(f, "</body></html>\n");
    fclose(f);
    int rc = fd_write_text_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
