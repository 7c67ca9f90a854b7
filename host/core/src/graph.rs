//! The order services deploy in: by `depends_on`, independent ones side by side.

use std::collections::BTreeMap;

/// Services grouped into waves: every service's dependencies are in earlier waves. Indices are
/// positions in the input.
pub type Waves = Vec<Vec<usize>>;

/// Orders services given as `(name, depends_on)`. Fails with the names around one cycle,
/// first name repeated at the end (`a → b → a`). Dependencies on unknown names are ignored here;
/// the config validation reports them.
pub fn waves(services: &[(&str, &[String])]) -> Result<Waves, Vec<String>> {
    let index: BTreeMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let deps: Vec<Vec<usize>> = services
        .iter()
        .map(|(_, d)| {
            d.iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect();
    let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); services.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut waves = Vec::new();
    let mut ready: Vec<usize> = (0..services.len()).filter(|&i| remaining[i] == 0).collect();
    let mut placed = 0;
    while !ready.is_empty() {
        placed += ready.len();
        let mut next = Vec::new();
        for &i in &ready {
            for &j in &dependents[i] {
                remaining[j] -= 1;
                if remaining[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        waves.push(std::mem::replace(&mut ready, next));
    }
    if placed == services.len() {
        return Ok(waves);
    }
    let start = (0..services.len())
        .find(|&i| remaining[i] > 0)
        .expect("an unplaced service");
    Err(cycle_from(start, &deps, &remaining)
        .into_iter()
        .map(|i| services[i].0.to_string())
        .collect())
}

/// Walks dependencies among unplaced services from `start` until one repeats.
fn cycle_from(start: usize, deps: &[Vec<usize>], remaining: &[usize]) -> Vec<usize> {
    let mut path = vec![start];
    // Where each service is on the path, so a long cycle is found in linear time.
    let mut position: Vec<Option<usize>> = vec![None; deps.len()];
    position[start] = Some(0);
    let mut current = start;
    loop {
        let next = *deps[current]
            .iter()
            .find(|&&d| remaining[d] > 0)
            .expect("an unplaced service waits on another");
        if let Some(pos) = position[next] {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        position[next] = Some(path.len());
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(deps: &[&str]) -> Vec<String> {
        deps.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn independent_services_share_a_wave() {
        let (db, api, web, worker) = (s(&[]), s(&["db"]), s(&["api"]), s(&["db"]));
        let services = [
            ("db", &db[..]),
            ("api", &api[..]),
            ("web", &web[..]),
            ("worker", &worker[..]),
        ];
        assert_eq!(
            waves(&services).unwrap(),
            vec![vec![0], vec![1, 3], vec![2]]
        );
    }

    #[test]
    fn a_cycle_is_named() {
        let (a, b, c, d) = (s(&["c"]), s(&["a"]), s(&["b"]), s(&[]));
        let services = [("a", &a[..]), ("b", &b[..]), ("c", &c[..]), ("d", &d[..])];
        assert_eq!(waves(&services).unwrap_err(), ["a", "c", "b", "a"]);
        let own = s(&["x"]);
        assert_eq!(waves(&[("x", &own[..])]).unwrap_err(), ["x", "x"]);
    }

    #[test]
    fn a_long_chain_orders_linearly() {
        let deps: Vec<Vec<String>> = (0..1000)
            .map(|i| {
                if i == 0 {
                    vec![]
                } else {
                    vec![format!("s{}", i - 1)]
                }
            })
            .collect();
        let names: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        let services: Vec<(&str, &[String])> = names
            .iter()
            .zip(&deps)
            .map(|(n, d)| (n.as_str(), &d[..]))
            .collect();
        assert_eq!(waves(&services).unwrap().len(), 1000);
    }
}
