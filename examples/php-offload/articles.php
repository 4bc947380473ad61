<?php
// The articles the example application knows (slug => title and paragraphs). A real site would
// read them from its database; what matters is that a URL can only name one of these, so the set
// of pages the application can write is fixed and small. Slugs match [a-z0-9-]{1,64}.
return [
    'hello-memfis' => [
        'title' => 'Hello, memfis',
        'body' => [
            'Every page of this site lives in memcached, written there through a memfis mount.',
            'nginx serves it with memcached_pass; PHP runs only when a page is not there yet.',
        ],
    ],
    'render-once' => [
        'title' => 'One render per page, however many hosts miss it',
        'body' => array_merge(
            [
                'Several web servers share one store. When a page is missing, every host may get a '
                . 'request for it at once; one of them renders it, the others wait on a lock in the '
                . 'shared mount and then read what it wrote.',
            ],
            // Long enough that a page seen half written would show.
            array_map(fn($i) => "Paragraph $i of a long article: the page is written under a "
                . 'hidden temporary name and renamed over its own name once complete, so nginx '
                . 'serves either nothing or the whole page.', range(1, 200))
        ),
    ],
    'invalidate-with-rm' => [
        'title' => 'Invalidation is rm',
        'body' => [
            'Removing a page from the mount removes it from memcached; the next request renders it again.',
        ],
    ],
];
